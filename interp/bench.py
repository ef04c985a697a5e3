"""Timing for the benchmark scripts: one warm-up per path, rounds in alternating order, the spread.

Every ``scripts/bench_*.py`` compares paths with :func:`time_paths` so that each path is warmed the same
way and none always runs first (warmer caches, a quieter machine). Ratios use the fastest round of each
path (:func:`ratio`); :func:`spread` prints min/median/max so the noise is visible beside them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (a no-op on CPU), so a timer sees the whole computation."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def round_orders(names: list[str], repeats: int) -> list[list[str]]:
    """The order of the paths in each timed round: as given, then reversed, alternating."""
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(repeats)]


def time_paths(paths: Mapping[str, Callable[[], object]], repeats: int = 3, *, warmup: bool = True,
               device: torch.device | str | None = None, log: Callable[[str], None] | None = None
               ) -> dict[str, list[float]]:
    """Seconds of each call of each path over ``repeats`` rounds (after one untimed call of each path)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(paths)
    if warmup:
        for name in names:
            paths[name]()
            synchronize(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r, order in enumerate(round_orders(names, repeats)):
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            paths[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        if log:
            log(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names))
    return times


def min_median_max(values: list[float], scale: float = 1.0) -> list[float]:
    """``[min, median, max]`` of ``values``, each times ``scale``."""
    return [scale * min(values), scale * statistics.median(values), scale * max(values)]


def spread(times: list[float]) -> str:
    """``min/median/max`` of a path's rounds, in seconds."""
    return "/".join(f"{t:.4g}" for t in min_median_max(times)) + " s"


def ratio(times: Mapping[str, list[float]], a: str, b: str) -> float:
    """Fastest round of ``a`` over fastest round of ``b``."""
    return min(times[a]) / min(times[b])
