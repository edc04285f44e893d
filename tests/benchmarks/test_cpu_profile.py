"""benchmarks.cpu_profile: CPU seconds per thread of a process tree, and cores per part of the job."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks import cpu_profile


def test_breakdown_counts_each_thread_in_the_part_it_had_first_and_new_threads_from_zero():
    before = {(10, 10): ("rank main threads", 5.0), (10, 11): ("rank other threads", 1.0), (20, 20): ("driver", 2.0)}
    after = {(10, 10): ("other", 9.0),  # the rank was exiting at the second snapshot
             (10, 11): ("other", 1.5),
             (10, 12): ("rank other threads", 0.5),  # started in between
             (20, 20): ("driver", 2.2)}
    cores = cpu_profile.breakdown(before, after, seconds=2.0)
    assert cores["rank main threads"] == pytest.approx(2.0)
    assert cores["rank other threads"] == pytest.approx(0.5)
    assert cores["driver"] == pytest.approx(0.1)
    assert cores["other"] == 0.0
    assert cores["total"] == pytest.approx(2.6)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_snapshot_sees_this_process_and_a_busy_child_with_its_cpu_time():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass"])
    try:
        first = cpu_profile.snapshot()  # while the child runs
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert first[(os.getpid(), os.getpid())][0] == "driver"
    assert (child.pid, child.pid) in first


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_busy_time_between_snapshots_shows_up_as_cores():
    """Spin until this process has used 0.5 s of CPU (however long a loaded machine takes), then the
    cores /proc shows for it must equal that CPU time over the wall time, whatever the load."""
    before, started, cpu_started = cpu_profile.snapshot(), time.perf_counter(), time.process_time()
    while time.process_time() - cpu_started < 0.5:
        pass
    after = cpu_profile.snapshot()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    cores = cpu_profile.breakdown(before, after, wall)
    assert cores["driver"] == pytest.approx(cpu / wall, abs=0.1), (cores, cpu, wall)  # /proc counts 10 ms ticks
