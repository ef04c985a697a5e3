"""Thread set-up of the entry point: CPUs from affinity and quota, passive waiting only beside busy processes."""

import json
import os
import subprocess
import sys

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
    monkeypatch.setattr(threads, "_cpu_jiffies", lambda: (state["busy"], state["own"]))

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
