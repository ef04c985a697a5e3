"""Thread set-up of the entry point: CPUs from affinity and quota, passive waiting only beside busy processes."""

import json
import os
import subprocess
import sys

import pytest

from interp import threads


def test_quota_cpus_reads_cgroup_v2_lines():
    assert threads.quota_cpus("max 100000\n") is None
    assert threads.quota_cpus("150000 100000\n") == 1
    assert threads.quota_cpus("400000 100000") == 4
    assert threads.quota_cpus("50000 100000") == 1  # a fraction of a CPU still gets one thread
    assert threads.quota_cpus("garbage") is None


def test_available_cpus_within_affinity():
    import os

    assert 1 <= threads.available_cpus() <= len(os.sched_getaffinity(0))


def test_other_busy_process_is_seen_and_user_settings_are_kept():
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        code = ("import json, sys\nfrom interp import threads\n"
                "print(json.dumps([threads.others_busy(0.5), threads.configure({}), "
                "threads.configure({'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'ACTIVE'}), 'torch' in sys.modules]))")
        busy, chosen, kept, torch_loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                                                     capture_output=True, text=True).stdout)
    finally:
        spin.kill()
    assert busy >= 0.5  # the spinning process holds about one core
    assert chosen == {"OMP_NUM_THREADS": str(threads.available_cpus()), "OMP_WAIT_POLICY": "PASSIVE"}
    assert kept == {} and not torch_loaded


def _stat(pid: int, utime: int, stime: int, nice: int, name: str = "python") -> str:
    """A ``/proc/<pid>/stat`` line: fields 14 and 15 are utime and stime, 19 the nice value."""
    rest = ["R"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 3 + [str(nice)] + ["0"] * 30
    return f"{pid} ({name}) " + " ".join(rest)


def test_niced_processes_count_only_by_the_share_they_take(tmp_path):
    """A fake /proc: a nice-19 process yields all but 1.25**-19 of its CPU time, one at our nice yields nothing,
    ours and unreadable entries are skipped, a command name with ') ' in it still parses; niced processes in another
    autogroup or cgroup count in full (the kernel weighs the groups there, not the nice values)."""
    me = os.getpid()
    procs = {11: (_stat(11, 70, 30, 19), "/autogroup-1 nice 0", "0::/a"),
             12: (_stat(12, 50, 50, 0), "/autogroup-1 nice 0", "0::/a"),
             13: (_stat(13, 10, 0, 5, "a) b"), "/autogroup-1 nice 0", "0::/a"),
             15: (_stat(15, 90, 0, 19), "/autogroup-2 nice 0", "0::/a"),  # another terminal's session
             16: (_stat(16, 90, 0, 19), "/autogroup-1 nice 0", "0::/b"),  # another cgroup
             me: (_stat(me, 500, 0, 19), "/autogroup-1 nice 0", "0::/a")}
    for pid, (stat, autogroup, cgroup) in procs.items():
        (tmp_path / str(pid)).mkdir()
        for name, text in (("stat", stat), ("autogroup", autogroup), ("cgroup", cgroup)):
            (tmp_path / str(pid) / name).write_text(text)
    (tmp_path / "14").mkdir()  # a process gone before its stat was read
    (tmp_path / "self").mkdir()
    (tmp_path / "sys" / "kernel").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "sched_autogroup_enabled").write_text("1\n")
    got = threads._yielding_jiffies(0, str(tmp_path))
    assert set(got) == {11, 13}
    assert abs(got[11] - 100 * (1 - 1.25 ** -19)) < 1e-9 and abs(got[13] - 10 * (1 - 1.25 ** -5)) < 1e-9
    assert threads._yielding_jiffies(19, str(tmp_path)) == {}  # nobody is niced below a nice-19 process
    (tmp_path / "sys" / "kernel" / "sched_autogroup_enabled").write_text("0\n")
    assert set(threads._yielding_jiffies(0, str(tmp_path))) == {11, 13, 15}  # autogroups off: nice applies

    hz = os.sysconf("SC_CLK_TCK")
    before = (1000, 100, {11: 10.0, 99: 50.0})
    after = (1000 + 2 * hz, 100 + hz, {11: 10.0 + 0.9 * hz, 13: 0.05 * hz})  # 99 exited, 13 is new
    assert abs(threads._others_cores(before, after, 1.0) - 0.05) < 1e-9  # 1 core of others, 0.95 of it niced


def test_a_niced_busy_process_does_not_make_threads_wait_passively():
    """The issue's case, a ``nice 19`` job on the other core: it soaks up idle time but takes almost nothing from
    our threads, so they keep spinning (passive waiting costs ~19% where nobody competes)."""
    if os.nice(0) >= 10:
        pytest.skip("the test process itself is niced: a nice-19 competitor would not be niced below it")
    spin = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c",
                             "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        code = ("import json\nfrom interp import threads\n"
                "print(json.dumps([threads.others_busy(0.5), threads.configure({})]))")
        busy, chosen = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                                 text=True).stdout)
    finally:
        spin.kill()
    assert busy < 0.3
    assert chosen == {"OMP_NUM_THREADS": str(threads.available_cpus()), "GOMP_SPINCOUNT": "30000000"}


def test_wait_policy_follows_the_load_at_start(monkeypatch):
    """Quiet: OpenMP's defaults. Busy with competing processes: passive waiting. Busy only with niced ones: long
    spins (a sleeping thread would hand its core to the niced job). What the user set is kept."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # configure acts only before torch is imported
    cpus = str(threads.available_cpus())
    for load, policy in [((0.0, 0.0), {}), ((1.0, 0.9), {"OMP_WAIT_POLICY": "PASSIVE"}),
                         ((1.0, 0.01), {"GOMP_SPINCOUNT": str(threads.NICED_SPINCOUNT)})]:
        monkeypatch.setattr(threads, "busy_cores", lambda load=load: load)
        assert threads.configure({}) == {"OMP_NUM_THREADS": cpus, **policy}, load
        assert threads.configure({"GOMP_SPINCOUNT": "0"}) == {"OMP_NUM_THREADS": cpus}
        assert threads.configure({"OMP_WAIT_POLICY": "active", "OMP_NUM_THREADS": "1"}) == {}


def test_too_late_once_torch_is_imported():
    import torch  # noqa: F401

    assert threads.configure({}) == {}


def test_load_follower_drops_a_thread_while_another_process_is_busy_and_restores_it(monkeypatch):
    """Fake clock and /proc: a competitor using 0.9 of a core sends torch from 2 threads to 1; when it stops the
    follower goes back to 2, and leaving the stage restores the starting count whatever the load."""
    import torch

    hz = os.sysconf("SC_CLK_TCK")
    state = {"t": 0.0, "busy": 0, "own": 0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: state["t"])
    monkeypatch.setattr(threads, "_cpu_jiffies", lambda: (state["busy"], state["own"], {}))

    def elapse(seconds: float, own_cores: float, other_cores: float) -> None:
        state["t"] += seconds
        state["own"] += round(own_cores * seconds * hz)
        state["busy"] += round((own_cores + other_cores) * seconds * hz)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.LoadFollower(every_s=2.0, enabled=True) as load:
            load.tick()  # first look: the baseline
            elapse(1.0, 2.0, 0.9)
            load.tick()  # within every_s: nothing measured
            assert torch.get_num_threads() == 2
            elapse(2.0, 1.1, 0.9)
            load.tick()
            assert torch.get_num_threads() == 1
            elapse(2.0, 1.0, 1.0)
            load.tick()
            assert torch.get_num_threads() == 1
            elapse(2.0, 1.0, 0.1)  # the competitor stopped
            load.tick()
            assert torch.get_num_threads() == 2
            elapse(2.0, 1.0, 1.0)
            load.tick()
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2 and [n for _, n in load.changes] == [1, 2, 1, 2]
        off = threads.LoadFollower(enabled=False)
        off.tick()
        elapse(2.0, 1.0, 1.0)
        off.tick()
        assert torch.get_num_threads() == 2 and off.changes == []
    finally:
        torch.set_num_threads(before)


def test_load_follower_counts_a_core_busy_from_half_a_core():
    load = threads.LoadFollower()
    load.full = 4
    assert [load.threads_for(x) for x in (0.0, 0.49, 0.5, 1.2, 1.6, 9.0)] == [4, 4, 3, 3, 2, 1]


def test_load_follower_acts_only_on_spinning_threads_and_can_be_switched_off():
    assert threads.follows_load({}) and threads.follows_load({"OMP_WAIT_POLICY": "active"})
    assert not threads.follows_load({"OMP_WAIT_POLICY": "passive"})  # passive threads already share fairly
    assert not threads.follows_load({"ANYDEPTH_FOLLOW_LOAD": "0"})
