"""train.gpus_per_rank: which applications can give the training stage its own GPUs (pure checks)."""
from __future__ import annotations

import re

import pytest

from pipelines.errors import ConfigError
from pipelines.train.resources import check_profile_support

GPU_EXECUTORS = {"spark.executor.resource.gpu.amount": "1"}


@pytest.mark.parametrize("master", ["spark://head:7077", "local-cluster[2,1,1024]", "yarn", "k8s://https://api:6443"])
def test_standalone_yarn_and_kubernetes_masters_with_gpu_executors_pass(master):
    assert check_profile_support(master, GPU_EXECUTORS, 1) is None  # passes: no ConfigError


@pytest.mark.parametrize("master, conf, says", [
    ("local[2]", GPU_EXECUTORS, "not on master=local[2]"),
    ("yarn", {**GPU_EXECUTORS, "spark.dynamicAllocation.enabled": "true"}, "refuses a barrier stage under dynamic"),
    ("yarn", {**GPU_EXECUTORS, "spark.task.resource.gpu.amount": "0.5"}, "unset it, so the ETL and inference"),
    ("spark://head:7077", {"spark.executor.resource.gpu.amount": "1"}, None),
    ("spark://head:7077", {}, "each executor has 0 GPU(s)"),
])
def test_what_cannot_work_is_one_config_error_naming_the_key(master, conf, says):
    if says is None:
        with pytest.raises(ConfigError, match="each executor has 1 GPU"):
            check_profile_support(master, conf, 2)
        return
    with pytest.raises(ConfigError, match=re.escape(says)) as err:
        check_profile_support(master, conf, 1)
    assert err.value.key == "train.gpus_per_rank"
