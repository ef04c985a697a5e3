"""Thread set-up of the entry point: CPUs from affinity and quota, passive waiting only beside busy processes."""

import json
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
