"""How numbers with confidence intervals are written, everywhere (CLI lines, the report, summaries)."""

from __future__ import annotations

__all__ = ["ci", "diff", "probability", "rate"]


def ci(d: dict | None, digits: int = 3) -> str:
    """``0.912 [0.850, 0.960]`` from ``{"value" | "rate", "lo", "hi"}``; ``–`` when there is no number."""
    if not d or d.get("value", d.get("rate")) is None:
        return "–"
    v = d.get("value", d.get("rate"))
    lo, hi = d.get("lo"), d.get("hi")
    if lo is None or hi is None or lo != lo or hi != hi:  # no interval (no resamples: None in JSON, NaN in memory)
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def rate(r: dict | None, digits: int = 2) -> str:
    """A grouped rate with its CI and counts: ``0.12 [0.05, 0.25] (3/25)``."""
    if not r or r.get("rate") is None:
        return "–"
    return f"{ci(r, digits)} ({r['k']}/{r['n']})"


def diff(d: dict | None, digits: int = 3) -> str:
    """A signed difference with its CI: ``+0.041 [-0.010, +0.090]``."""
    if not d:
        return "–"
    return f"{d['value']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def probability(p: float) -> str:
    """A score or threshold in [0, 1] with six significant digits, so one near 1 reads 0.999995, not 1.0000
    (thresholds of stacked probes sit that close to 1); more digits where six would round a value below 1 up to
    ``1`` (0.99999988 reads 0.9999999)."""
    p = float(p)
    for digits in range(6, 18):
        text = f"{p:.{digits}g}"
        if p >= 1.0 or float(text) < 1.0:
            return text
    return text
