"""The training stage's GPUs, asked for by that stage alone (``train.gpus_per_rank``).

Spark takes one task GPU amount per application (``spark.task.resource.gpu.amount``), so without
this every ETL and inference task would hold a GPU too. With ``train.gpus_per_rank=N`` the
application's tasks ask for none, and only the barrier stage's tasks ask for N GPUs each through a
stage-level *task* resource profile (``RDD.withResources``). Spark 3.5 runs such a profile with
dynamic allocation off on standalone (``spark://``, ``local-cluster``), YARN and Kubernetes masters
(``ResourceProfileManager.isSupported``); its barrier checks count the stage's slots with the profile
(``TaskSchedulerImpl.calculateAvailableSlots``) and refuse only dynamic allocation. Executors keep
the application's resources (``spark.executor.resource.gpu.amount``): every executor is a GPU
executor, and ETL and inference tasks run on them without holding a GPU.
"""
from __future__ import annotations

from typing import Any

from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError

KEY = "train.gpus_per_rank"
PROFILE_MASTERS = ("spark://", "local-cluster", "yarn", "k8s://")  # where Spark 3.5 runs task resource profiles


def _amount(conf: Any, key: str) -> float:
    text = conf.get(key, "0") or "0"
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"Spark setting {key}={text!r} is not a number", key=key) from None


def check_profile_support(master: str, conf: Any, gpus: int) -> None:
    """Raise a :class:`ConfigError` naming ``train.gpus_per_rank`` when ``gpus`` per rank cannot be
    scheduled by this application (``conf``: its SparkConf, anything with ``get(key, default)``)."""
    if not master.startswith(PROFILE_MASTERS):
        raise ConfigError(f"config key '{KEY}' = {gpus} asks Spark for GPUs per training task with a stage-level "
                          f"resource profile, which Spark 3.5 schedules on standalone (spark://, local-cluster), "
                          f"YARN and Kubernetes masters, not on master={master}: set {KEY}=0 (on one machine, "
                          "train.device=auto gives each rank a visible GPU)", key=KEY)
    if (conf.get("spark.dynamicAllocation.enabled", "false") or "").lower() == "true":
        raise ConfigError(f"config key '{KEY}' = {gpus}: Spark refuses a barrier stage under dynamic allocation "
                          "(spark.dynamicAllocation.enabled=true): turn it off for this application", key=KEY)
    if _amount(conf, "spark.task.resource.gpu.amount") > 0:
        raise ConfigError(f"config key '{KEY}' = {gpus} asks for the training stage's GPUs itself, but "
                          "spark.task.resource.gpu.amount gives every task of the application a GPU: unset it, so "
                          "the ETL and inference tasks hold none", key=KEY)
    executor = _amount(conf, "spark.executor.resource.gpu.amount")
    if executor < gpus:
        raise ConfigError(f"config key '{KEY}' = {gpus} but each executor has {executor:g} GPU(s) "
                          f"(spark.executor.resource.gpu.amount): give executors at least {gpus} GPU(s) and a "
                          "discovery script (spark-conf/spark-defaults.gpu.conf)", key=KEY)


def training_profile(spark: Any, config: PipelineConfig) -> Any:
    """The resource profile of the training stage's tasks: ``train.gpus_per_rank`` GPUs and the
    application's CPUs per task; None when the stage asks for nothing of its own (0)."""
    gpus = config.train.gpus_per_rank
    if gpus == 0:
        return None
    sc = spark.sparkContext
    conf = sc.getConf()
    check_profile_support(sc.master, conf, gpus)
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    cpus = int(conf.get("spark.task.cpus", "1"))
    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(cpus).resource("gpu", gpus)).build
