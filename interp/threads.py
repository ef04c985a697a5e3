"""OpenMP threads that fit the CPUs this process actually has.

torch's OpenMP threads spin while they wait for each other. When another process keeps one of two cores busy, the
thread sharing that core is descheduled mid-region while its partner spins, and every parallel region waits for
it: measured on a 2-core EPYC (AVX-512 BF16, the embedded model in bf16), 30 decode steps of 8 rows took 3.1 s
quiet and 10.6 s beside one spinning process (3.5x); with passive waiting 4.9 s (1.6x; a prefill 2.3x -> 1.9x). Passive
waiting costs ~19% on a quiet machine (3.6 s), so it is chosen only when other processes are busy at start.

:func:`configure` runs before torch is imported (the ``anydepth`` entry point calls it first): one thread per CPU
of the process's affinity mask and cgroup quota, and ``OMP_WAIT_POLICY=PASSIVE`` when the other CPUs are busy.
Variables the user set are left alone.
"""

from __future__ import annotations

import math
import os
import sys
import time

BUSY_CORES = 0.3  # CPU time of other processes (in cores) from which threads wait passively


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (``cpu.max``)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as fh:
            n = min(n, quota_cpus(fh.read()) or n)
    except OSError:
        pass
    return max(1, n)


def quota_cpus(cpu_max: str) -> int | None:
    """Whole CPUs a cgroup v2 ``cpu.max`` line allows (``"150000 100000"`` -> 1), None without a quota."""
    try:
        quota, period = cpu_max.split()[:2]
        return None if quota == "max" else max(1, math.floor(int(quota) / int(period)))
    except ValueError:
        return None


def _cpu_jiffies() -> tuple[int, int]:
    """``(busy, own)``: busy jiffies of the whole machine and of this process (Linux ``/proc``)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
    with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as fh:
        own = fh.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime


def _others_cores(before: tuple[int, int], after: tuple[int, int], seconds: float) -> float:
    """Cores' worth of CPU time other processes used between two :func:`_cpu_jiffies` readings."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / hz / seconds)


def others_busy(sample_s: float = 0.1) -> float:
    """Cores' worth of CPU time other processes used over ``sample_s`` seconds (0.0 where ``/proc`` is missing)."""
    try:
        before = _cpu_jiffies()
        time.sleep(sample_s)
        after = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return 0.0
    return _others_cores(before, after, sample_s)


def configure(environ: dict | None = None) -> dict[str, str]:
    """Set ``OMP_NUM_THREADS`` (and ``OMP_WAIT_POLICY=PASSIVE`` when other processes are busy) unless the user
    set them or torch is already imported (too late: OpenMP reads them once). Returns what it set."""
    env = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return {}
    out = {}
    if "OMP_NUM_THREADS" not in env:
        out["OMP_NUM_THREADS"] = str(available_cpus())
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env and others_busy() >= BUSY_CORES:
        out["OMP_WAIT_POLICY"] = "PASSIVE"
    env.update(out)
    return out


def follows_load(environ) -> bool:
    """Whether :class:`LoadFollower` acts: not with ``ANYDEPTH_FOLLOW_LOAD=0``, and not under
    ``OMP_WAIT_POLICY=PASSIVE``. Passive threads share a busy core fairly (two threads beside one busy process get
    4/3 of a core, one thread gets 1), so dropping one would cost; only spinning threads stall on a shared core."""
    return environ.get("ANYDEPTH_FOLLOW_LOAD", "1") != "0" and environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"


class LoadFollower:
    """Torch's thread count that follows other processes' load during a long loop: call :meth:`tick` once per
    step; every ``every_s`` seconds it measures the cores other processes used since the last look and sets
    ``torch.set_num_threads`` to the CPUs they leave free (at least one), back to all of them when they stop.

    A run that started on a quiet machine keeps spinning OpenMP threads (:func:`configure` chose them), and a
    spinning thread that shares its core with another process stalls every parallel region; one thread fewer
    avoids that core. ``torch.set_num_threads`` acts on the calling thread, so ticks come from the loop itself.
    Used as a context manager it restores the starting count on exit. Off under passive waiting
    (:func:`follows_load`).
    """

    def __init__(self, every_s: float = 2.0, drop_at: float = 0.5, enabled: bool | None = None):
        self.every_s, self.drop_at = every_s, drop_at
        self.enabled = follows_load(os.environ) if enabled is None else enabled
        self.full, self.start = 0, 0.0
        self.last: tuple[float, tuple[int, int]] | None = None  # (time, _cpu_jiffies()) of the last look
        self.changes: list[tuple[float, int]] = []  # (seconds since start, threads set)

    def tick(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.last is not None and now - self.last[0] < self.every_s:
            return
        try:
            reading = _cpu_jiffies()
        except (OSError, ValueError, IndexError):
            self.enabled = False
            return
        import torch

        if self.last is None:
            self.full, self.start = torch.get_num_threads(), now
        else:
            self.set(torch, self.threads_for(_others_cores(self.last[1], reading, now - self.last[0])))
        self.last = (now, reading)

    def __enter__(self) -> LoadFollower:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Give the next stage the thread count this one started with."""
        if self.full:
            import torch

            self.set(torch, self.full)

    def threads_for(self, others: float) -> int:
        """Threads to run beside ``others`` busy cores: a core counts busy from ``drop_at`` of a core."""
        return max(1, self.full - math.floor(others + 1 - self.drop_at))

    def set(self, torch, n: int) -> None:
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
            self.changes.append((round(time.monotonic() - self.start, 1), n))
