"""Config-addressed, resumable stages: each runs into a folder named by a hash of its configuration and of the
stages it reads from, and a ``stage.json`` written last marks it finished, so a rerun skips finished stages (and
an interrupted extraction resumes inside its folder)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import interp

__all__ = ["Runner", "Stage"]


@dataclass
class Stage:
    """One step of the study: ``run(folder)`` does the work; ``config`` (JSON-ready, without the output folder)
    is what it depends on, beside the folders of the stages it reads (``inputs``) and ``content`` (what a config
    names without spelling it out, e.g. a corpus spec's sha256)."""

    name: str
    config: dict[str, Any]
    run: Callable[[Path], Any]
    inputs: list[str] = field(default_factory=list)
    content: str = ""
    note: str = ""  # what the log shows (default: every option set)

    def key(self, root: Path | None = None) -> str:
        """A hash of what the stage depends on; paths inside ``root`` count relative to it (a run folder can be
        moved, and two run folders of one configuration name their stages alike)."""
        blob = json.dumps({"config": self.config, "inputs": self.inputs, "version": interp.__version__,
                           **({"content": self.content} if self.content else {})}, sort_keys=True)
        if root is not None:
            blob = blob.replace(json.dumps(str(root))[1:-1], "<run>")
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def describe(self) -> str:
        """One line for the log: ``note``, or every option that is set."""
        return self.note or ", ".join(f"{k}={v}" for part in self.config.values() if isinstance(part, dict)
                                      for k, v in part.items() if v not in (None, "", [], ()))


class Runner:
    """Runs stages in order under ``root``, reusing the ones whose ``stage.json`` holds the same key."""

    def __init__(self, root: Path, total: int, log: Callable[[str], None] = print):
        self.root, self.total, self.done, self.log = Path(root), total, 0, log
        self.timings: dict[str, dict] = {}

    def folder(self, stage: Stage) -> Path:
        return self.root / f"{stage.name}-{stage.key(self.root)}"

    def run(self, stage: Stage) -> Path:
        self.done += 1
        head = f"[{self.done}/{self.total}] {stage.name}"
        folder = self.folder(stage)
        marker = folder / "stage.json"
        key = stage.key(self.root)
        if marker.exists() and json.loads(marker.read_text()).get("key") == key:
            self.log(f"{head}: finished earlier, reusing {folder}")
            self.timings[stage.name] = {"seconds": 0.0, "reused": True}
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"{head}: {stage.describe()}")
        start = time.perf_counter()
        stage.run(folder)
        seconds = time.perf_counter() - start
        self.timings[stage.name] = {"seconds": round(seconds, 1), "reused": False}
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "config": stage.config, "seconds": seconds}, indent=1) + "\n")
        os.replace(tmp, marker)
        return folder
