"""The whole study as one library call: :func:`run_study` with a :class:`StudyConfig` (``anydepth demo``)."""

from interp.study.config import PRESETS, StudyConfig, prepare
from interp.study.pipeline import run_study
from interp.study.result import StudyResult

__all__ = ["PRESETS", "StudyConfig", "StudyResult", "prepare", "run_study"]
