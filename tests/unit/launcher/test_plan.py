"""How many barrier tasks a master runs at once, known before Spark is asked (pure logic)."""
from __future__ import annotations

import os

import pytest

from pipelines.launcher.plan import local_slots


@pytest.mark.parametrize("master, cpus, slots", [("local", 1, 1), ("local[2]", 1, 2), ("local[4,3]", 2, 2),
                                                  ("local[*]", 1, os.cpu_count()), ("local-cluster[2,1,1024]", 1, None),
                                                  ("yarn", 1, None), ("spark://head:7077", 1, None), ("", 1, None)])
def test_a_local_master_says_how_many_tasks_run_at_once_and_a_cluster_does_not(master, cpus, slots):
    assert local_slots(master, cpus) == slots
