"""OpenMP threads that fit the CPUs this process actually has.

torch's OpenMP threads spin while they wait for each other. When another process keeps one of two cores busy, the
thread sharing that core is descheduled mid-region while its partner spins, and every parallel region waits for
it: measured on a 2-core EPYC (AVX-512 BF16, the embedded model in bf16), 30 decode steps of 8 rows took 3.1 s
quiet and 10.6 s beside one spinning process (3.5x); with passive waiting 4.9 s (1.6x; a prefill 2.3x -> 1.9x). Passive
waiting costs ~19% on a quiet machine (3.6 s), so it is chosen only when other processes are busy at start.

:func:`configure` runs before torch is imported (the ``anydepth`` entry point calls it first): one thread per CPU
of the process's affinity mask and cgroup quota, and ``OMP_WAIT_POLICY=PASSIVE`` when the other CPUs are busy.
Variables the user set are left alone. A process niced below ours counts only by the share of a core the scheduler
gives it against our threads (a ``nice 19`` busy loop: about 1.4%), not by the idle time it soaks up. Where such
processes are the only busy ones, threads spin longer before they sleep (:data:`NICED_SPINCOUNT`): the demo beside
a ``nice 19`` busy loop took 1.01x its quiet time, against 1.41x with passive waiting (2-core AMX Xeon).
"""

from __future__ import annotations

import math
import os
import sys
import time

BUSY_CORES = 0.3  # CPU time of other processes (in cores) from which threads wait passively
# libgomp's spins before a waiting thread sleeps, where the only busy processes are niced below us (its default is
# 300,000, ~3 ms on a 2-core AMX Xeon; this is ~0.3 s): a thread that sleeps between parallel regions hands its
# core to the niced job and, woken, waits for the job's time slice to end
NICED_SPINCOUNT = 30_000_000
NICE_STEP = 1.25  # the kernel's CPU weight falls by about this factor per nice level (1024 at 0, 15 at 19)


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


def _stat_fields(text: str) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` line after the command name (field 3, the state, first)."""
    return text.rsplit(")", 1)[1].split()


def _sched_group(pid_dir: str, autogroups: bool) -> tuple[str, ...]:
    """Where nice values compare: the process's cgroup and, with autogrouping on, its autogroup (``"?"`` where
    unreadable). Across cgroups or autogroups the kernel weighs the groups, not the processes' nice values
    (``man 7 sched``)."""
    out = []
    for name in ("cgroup", "autogroup")[: 2 if autogroups else 1]:
        try:
            with open(f"{pid_dir}/{name}", encoding="ascii", errors="replace") as fh:
                out.append(fh.read().split(" nice ")[0].strip())  # an autogroup reads "/autogroup-38 nice 0"
        except OSError:
            out.append("?")
    return tuple(out)


def _autogroups_on(proc: str) -> bool:
    """Whether the kernel groups processes by session (``sched_autogroup_enabled``)."""
    try:
        with open(f"{proc}/sys/kernel/sched_autogroup_enabled", encoding="ascii") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


def _yielding_jiffies(own_nice: int, proc: str = "/proc") -> dict[int, float]:
    """Per other process niced below us in our scheduling group: its CPU jiffies times the part it yields to us.

    The fair scheduler gives a thread of nice ``n`` a share ``NICE_STEP ** -(n - own_nice)`` of our threads' weight
    on a shared core, so a ``nice 19`` busy loop beside our nice-0 threads takes about 1.4% of that core, however
    much idle time it soaks up: its CPU time does not slow us. Only processes in our cgroup and autogroup
    (:func:`_sched_group`) are discounted; the rest, and processes we cannot read, count in full."""
    out = {}
    me = os.getpid()
    autogroups = _autogroups_on(proc)
    ours = _sched_group(f"{proc}/{me}", autogroups)
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"{entry.path}/stat", encoding="ascii", errors="replace") as fh:
                f = _stat_fields(fh.read())
            nice = int(f[16])
        except (OSError, ValueError, IndexError):
            continue
        if nice > own_nice and _sched_group(entry.path, autogroups) == ours:
            out[int(entry.name)] = (int(f[11]) + int(f[12])) * (1 - NICE_STEP ** (own_nice - nice))
    return out


def _cpu_jiffies() -> tuple[int, int, dict[int, float]]:
    """``(busy, own, yielding)``: busy jiffies of the whole machine, of this process, and the niced processes' part
    that does not compete with it (:func:`_yielding_jiffies`; Linux ``/proc``)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
    with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as fh:
        own = _stat_fields(fh.read())
    return busy, int(own[11]) + int(own[12]), _yielding_jiffies(int(own[16]))  # utime + stime, nice


def _others_cores(before: tuple, after: tuple, seconds: float, weighted: bool = True) -> float:
    """Cores' worth of CPU time other processes used between two :func:`_cpu_jiffies` readings; ``weighted``:
    niced processes counted only by the share of a core they take from us."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    yielded = sum(max(0.0, j - before[2].get(pid, 0.0)) for pid, j in after[2].items()) if weighted else 0.0
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1]) - yielded) / hz / seconds)


def busy_cores(sample_s: float = 0.1) -> tuple[float, float]:
    """``(all, competing)``: cores' worth of CPU time other processes used over ``sample_s`` seconds, in all and
    with niced processes counted by their share against us (0.0 where ``/proc`` is missing)."""
    try:
        before = _cpu_jiffies()
        time.sleep(sample_s)
        after = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    return _others_cores(before, after, sample_s, weighted=False), _others_cores(before, after, sample_s)


def others_busy(sample_s: float = 0.1) -> float:
    """Cores' worth of CPU time competing processes used over ``sample_s`` seconds (:func:`busy_cores`)."""
    return busy_cores(sample_s)[1]


def configure(environ: dict | None = None) -> dict[str, str]:
    """Set ``OMP_NUM_THREADS``, and the wait policy for the load at start: ``OMP_WAIT_POLICY=PASSIVE`` beside
    competing busy processes, ``GOMP_SPINCOUNT=`` :data:`NICED_SPINCOUNT` where the only busy ones are niced below
    us; nothing the user set, and nothing once torch is imported (too late: OpenMP reads them once). Returns what it
    set."""
    env = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return {}
    out = {}
    if "OMP_NUM_THREADS" not in env:
        out["OMP_NUM_THREADS"] = str(available_cpus())
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        every, competing = busy_cores()
        if competing >= BUSY_CORES:
            out["OMP_WAIT_POLICY"] = "PASSIVE"
        elif every >= BUSY_CORES:
            out["GOMP_SPINCOUNT"] = str(NICED_SPINCOUNT)
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
        self.last: tuple[float, tuple] | None = None  # (time, _cpu_jiffies()) of the last look
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
