"""The one place dlpipe builds a SparkSession.

Settings come from ``spark-conf/spark-defaults.conf`` (via ``SPARK_CONF_DIR``), exactly as for
``spark-submit``; Python only fills in what nobody else said: the master (``local[*]``) and,
for local masters, loopback addresses.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import SparkSession

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF_DIR = REPO_ROOT / "spark-conf"
ANSI_MODE = "spark.sql.ansi.enabled"  # off in every dlpipe session: see get_spark
SPARK_LOG_ENV = "DLPIPE_SPARK_LOG"  # the log file spark-conf/log4j2.properties writes the full text to


def spark_log_path() -> str:
    """Where this job's Spark log file (Java stack traces, failed tasks' tracebacks) is: the one
    :func:`get_spark` chose, else log4j2.properties' default (under spark-submit)."""
    return os.environ.get(SPARK_LOG_ENV) or os.path.join(tempfile.gettempdir(), "dlpipe-spark.log")


def append_to_spark_log(text: str) -> str:
    """Append ``text`` to this job's Spark log file; its path (or why it could not be written)."""
    path = spark_log_path()
    try:
        with open(path, "a") as log:
            log.write(text)
    except OSError as e:
        return f"not kept: {path}: {e}"
    return path


def _choose_spark_log(app_name: str) -> None:
    """A log file of its own for the JVM this process is about to start (read by log4j2.properties)."""
    if SPARK_LOG_ENV in os.environ or under_spark_submit():
        return
    folder = os.path.join(tempfile.gettempdir(), "dlpipe-logs")
    os.makedirs(folder, exist_ok=True)
    name = f"{app_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    os.environ[SPARK_LOG_ENV] = os.path.join(folder, name)


def spark_conf_dir() -> Path:
    """The Spark conf folder in use: ``$SPARK_CONF_DIR``, else the repository's ``spark-conf/``."""
    return Path(os.environ.get("SPARK_CONF_DIR") or DEFAULT_CONF_DIR)


def read_spark_defaults(conf_dir: Path | None = None) -> dict[str, str]:
    """Parse ``spark-defaults.conf`` (``key value`` lines, ``#`` comments) into a dict."""
    path = (conf_dir or spark_conf_dir()) / "spark-defaults.conf"
    settings: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                settings[key.strip()] = value.strip()
    return settings


def under_spark_submit() -> bool:
    """True when spark-submit (or pyspark) already started the JVM for this Python process."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(app_name: str, master: str = "", conf: dict[str, str] | None = None) -> SparkSession:
    """Return the active SparkSession or build one that reads the project's Spark settings.

    ``master``: used only when neither spark-submit nor spark-defaults.conf named one;
    empty means ``local[*]``. ``conf``: extra settings (the config's ``spark`` section).
    """
    if DEFAULT_CONF_DIR.is_dir():
        os.environ.setdefault("SPARK_CONF_DIR", str(DEFAULT_CONF_DIR))
    # Executors must run the same interpreter (and so the same torch/horovod) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    _choose_spark_log(app_name)
    builder = SparkSession.builder.appName(app_name)
    if not under_spark_submit() and "spark.master" not in read_spark_defaults():
        master = master or "local[*]"
        builder = builder.master(master)
        if master.startswith("local"):
            # Local runs talk only over loopback, whatever the machine's outward address is.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = builder.config("spark.driver.host", "127.0.0.1")
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # dlpipe's validation reads a failed cast as null and quarantines the record with its reason.
    # Spark 4 turns ANSI mode on by default, where that cast fails the whole job at the first bad
    # value: dlpipe keeps Spark 3.5's semantics on every line (README "Spark lines").
    spark.conf.set(ANSI_MODE, "false")
    return spark



# Called with each stage description ``describe`` is given, in order (benchmarks time phases with
# it). Add and remove your own callable (in a try/finally); a listener must not raise.
STAGE_LISTENERS: list[Callable[[str], None]] = []


def describe(spark: SparkSession, stage: str) -> None:
    """Name the Spark jobs that follow after a pipeline stage (shown in the Spark UI); tell
    :data:`STAGE_LISTENERS`."""
    spark.sparkContext.setJobDescription(f"dlpipe {stage}")
    for listener in list(STAGE_LISTENERS):
        listener(stage)


_OUR_ERROR = re.compile(r"(?:pipelines|models)\.[\w.]*\.(\w+(?:Error|Failed|Exception)): ([^\n]*)")


def task_failure(error: BaseException) -> str | None:
    """The error a Spark task raised, as one line, from the text Spark wraps it in (a Py4J error with
    the JVM's stack and the task's Python traceback): ours by name (``StorageError: s3://b/x: ...``),
    another library's as ``a Spark task failed: ArrowInvalid: ...``; None when no Python task failed."""
    text = str(error)
    found = _OUR_ERROR.findall(text)
    if found:
        name, message = found[-1]
        return f"{name}: {message.strip()}"
    if type(error).__module__.split(".")[0] not in ("py4j", "pyspark"):
        return None
    cause = _last_python_error(text)
    return f"a Spark task failed: {cause}" if cause else None


def _last_python_error(text: str) -> str:
    """``ArrowInvalid: ...``: the exception line ending the last Python traceback in ``text``."""
    marker = "Traceback (most recent call last):"
    if marker not in text:
        return ""
    for line in text[text.rindex(marker) + len(marker):].splitlines():
        if line.strip() and not line[0].isspace():
            name, _, message = line.partition(": ")
            return f"{name.rsplit('.', 1)[-1]}: {message.strip()}" if message else name.rsplit(".", 1)[-1]
    return ""
