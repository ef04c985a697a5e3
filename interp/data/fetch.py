"""Locate a dataset file: the read-only mirror named by ``ANYDEPTH_DATA``, else a sha256-checked download.

With ``ANYDEPTH_DATA`` set, files are read from ``$ANYDEPTH_DATA/<folder>/<path>`` and never downloaded.
Without it, a file is fetched once from its pinned public URL (tried in order) into
``$ANYDEPTH_CACHE/datasets/<folder>/<path>`` (default cache ``~/.cache/anydepth``). Both paths check the
pinned sha256; a mismatch is a :class:`~interp.UserError` and a bad download is never kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from interp import UserError

DATA_ENV = "ANYDEPTH_DATA"
CACHE_ENV = "ANYDEPTH_CACHE"
_TIMEOUT_S = 60


@dataclass(frozen=True)
class FileSpec:
    """One upstream file: where it sits in the mirror, where to download it, and what it must hash to."""

    folder: str
    path: str
    sha256: str
    urls: tuple[str, ...]
    rows: int | None = None  # expected data rows (CSV rows, JSON list items); None for licences etc.

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.path}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mirror_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "anydepth"
    return root / "datasets"


def _check_sha(spec: FileSpec, path: Path, origin: str) -> None:
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise UserError(f"sha256 mismatch for {spec.key} ({origin} {path}): expected {spec.sha256}, "
                        f"got {actual}; replace the file with the pinned upstream version")


def mirror_path(spec: FileSpec, mirror: Path) -> Path:
    """The mirror file for ``spec``, sha-checked; a missing file says which env var and path."""
    path = mirror / spec.folder / spec.path
    if not path.is_file():
        raise UserError(f"dataset file missing: expected {path} (from ${DATA_ENV}={mirror}); "
                        f"copy {spec.key} there or unset {DATA_ENV} to download it")
    _check_sha(spec, path, "mirror file")
    return path


def download(spec: FileSpec, dest: Path) -> Path:
    """Fetch ``spec`` into ``dest`` (first URL that works), verifying sha256 before the file appears."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for url in spec.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
                shutil.copyfileobj(resp, out)
            actual = sha256_file(tmp)
            if actual != spec.sha256:
                errors.append(f"{url}: sha256 {actual} != expected {spec.sha256}")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as err:
            errors.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise UserError(f"could not download {spec.key} with the pinned sha256 ({'; '.join(errors)}); "
                    f"set {DATA_ENV} to a mirror directory holding {spec.key}")


def resolve(spec: FileSpec) -> Path:
    """Path of a verified local copy of ``spec`` (mirror if ``ANYDEPTH_DATA`` is set, else cache/download)."""
    mirror = mirror_dir()
    if mirror is not None:
        return mirror_path(spec, mirror)
    cached = cache_dir() / spec.folder / spec.path
    if cached.is_file():
        if sha256_file(cached) == spec.sha256:
            return cached
        cached.unlink()  # stale or corrupted cache entry: fetch again
    return download(spec, cached)
