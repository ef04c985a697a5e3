"""The corpus stage: a spec's corpus built (or resumed) with a model into a folder, checked before the model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from interp.config import run_config
from interp.corpus.build import CorpusConfig, write_corpus
from interp.corpus.plan import plan_corpus
from interp.corpus.spec import load_spec, spec_path
from interp.model.loading import LoadedModel, ModelConfig, as_loaded, model_config_of
from interp.naming import check_out, file_slug
from interp.results import Result


@dataclass
class CorpusResult(Result):
    """A built corpus: its folder, the continuations file and what each spec entry gave."""

    kind = "corpus"
    path: Path
    spec_name: str
    spec_sha256: str
    rows: int
    entries: list[dict] = field(default_factory=list)

    @property
    def continuations(self) -> Path:
        return self.path / "continuations.jsonl"

    def summary(self) -> str:
        lines = [f"  {e['entry']:>2} {e['name']} ({e['label']}): {e['rows']}/{e['planned']} rows" for e in self.entries]
        return "\n".join([*lines, f"corpus {self.spec_name} (spec sha256 {self.spec_sha256[:12]}): {self.rows} rows "
                                  f"in {self.path}"])


def build_corpus(model: ModelConfig | LoadedModel | str, cfg: CorpusConfig, *, progress: bool = True) -> CorpusResult:
    """Build ``cfg.spec``'s corpus with ``model`` into ``cfg.out`` (default ``runs/corpus/<model>-<spec>-<hash>``);
    rerun to resume. The output folder, the spec and its sources are checked before the model loads."""
    cfg.validate()
    model_cfg = model_config_of(model)
    if cfg.out:
        check_out(cfg.out, "dir")  # before the spec's data are read
    spec = load_spec(cfg.spec)
    tasks = plan_corpus(spec, where=str(spec_path(cfg.spec)))  # sources and counts checked before the model loads
    out = Path(cfg.out) if cfg.out else check_out(Path("runs") / "corpus" / (
        f"{file_slug(model_cfg.model)}-{file_slug(spec.name)}-{spec.sha256()[:12]}"), "dir")
    loaded = as_loaded(model)
    built = write_corpus(loaded.model, loaded.tokenizer, spec, out, model_provenance=loaded.provenance(),
                         batch_size=cfg.gen_batch_size, too_long=cfg.too_long, gen_dtype=cfg.gen_dtype,
                         run_config=run_config(model=model_cfg, corpus=cfg), tasks=tasks, progress=progress)
    return CorpusResult(out, spec.name, spec.sha256(), int(built["rows"]), list(built["entries"]))
