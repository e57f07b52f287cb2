"""The Spark session of ``deepfm prepare --engine spark``: checked requirements, started from
``--master`` and ``--conf`` (or the session already running), its UI address printed.

The same command runs on a laptop (``local[*]``, the default: Spark starts inside this process)
and on a cluster (``--master spark://HOST:7077``, ``yarn``, ``k8s://...``); under ``spark-submit``
its own ``--master`` is kept. Spark failures that are the user's to fix (no Java, a master that
cannot be reached) become one-line :class:`~deepfm.errors.ConfigError` s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepfm.data.options import EngineOptions
from deepfm.errors import ConfigError, brief

EXTRA = "pip install 'deepfm[spark]'"
# Input bytes per task, read and shuffled (Spark's defaults: 128 MB splits, 200 shuffle partitions).
# A task's memory grows with its rows; with local[N] every task shares the one JVM's heap (1 GiB by
# default): 128 MB splits of the 1M-row Criteo-like file ran out of heap in the encode stage.
TASK_BYTES = 32 << 20
LOCAL_HEAP_MAX_GIB = 8  # the largest JVM heap deepfm gives local[N] by itself (see _local_memory)
# Settings deepfm starts a session with (a --conf of the same key wins).
DEFAULTS = {
    "spark.app.name": "deepfm prepare",
    "spark.ui.showConsoleProgress": "false",  # progress lines are deepfm's own
    "spark.log.level": "ERROR",
    "spark.sql.session.timeZone": "UTC",
    "spark.pyspark.python": sys.executable,  # executors run the driver's interpreter (same packages)
    "spark.pyspark.driver.python": sys.executable,
    "spark.sql.files.maxPartitionBytes": str(TASK_BYTES),  # input splits: see TASK_BYTES
}


def require() -> None:
    """pyspark importable and a Java runtime found, else a one-line error naming the extra."""
    if importlib.util.find_spec("pyspark") is None:
        raise ConfigError(f"--engine spark needs pyspark (and Java 17+): {EXTRA}")
    home = os.environ.get("JAVA_HOME")
    if not (home and (Path(home) / "bin" / "java").exists()) and shutil.which("java") is None:
        raise ConfigError(
            f"--engine spark needs a Java 17+ runtime (java on PATH or JAVA_HOME), e.g. "
            f"apt-get install openjdk-17-jre-headless; pyspark comes with {EXTRA}"
        )


@contextmanager
def spark_session(engine: EngineOptions, say: Any, input_bytes: int = 0) -> Iterator[Any]:
    """The active Spark session (a notebook's, a test's, spark-submit's), else a new one from
    ``engine`` that is stopped at the end. ``say``: prints a progress line. A new session's
    shuffles get one partition per :data:`TASK_BYTES` of input (at least one per core)
    unless ``--conf spark.sql.shuffle.partitions`` says otherwise."""
    require()
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        _announce(active, say)
        yield active
        return
    builder = SparkSession.builder
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # launched by spark-submit: its --master wins
    if not submitted or engine.master != EngineOptions.master:
        builder = builder.master(engine.master)
    for key, value in {**DEFAULTS, **_local_memory(engine.master), **engine.settings()}.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # pyspark raises plain exceptions for a JVM that does not start
        raise ConfigError(f"--engine spark: Spark did not start on {engine.master}: {brief(exc)}") from None
    if "spark.sql.shuffle.partitions" not in engine.settings():
        cores = spark.sparkContext.defaultParallelism
        spark.conf.set("spark.sql.shuffle.partitions", str(max(cores, -(-input_bytes // TASK_BYTES))))
    _announce(spark, say)
    try:
        yield spark
    finally:
        spark.stop()


def _local_memory(master: str) -> dict[str, str]:
    """With ``local[N]`` every task runs in this command's own JVM: its heap
    (``spark.driver.memory``, Spark's default 1 GiB) is sized to the machine instead, a quarter of
    its memory between 1 and 8 GiB. The 1 GiB default ran out of memory encoding the 1M-row
    Criteo-like file (39 vocabularies joined in each task). A cluster's executors keep their own
    settings; ``--conf spark.driver.memory`` wins."""
    if not master.startswith("local[") and master != "local":
        return {}
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on POSIX: Spark's default
        return {}
    gib = min(LOCAL_HEAP_MAX_GIB, max(1, ram // 4 >> 30))
    return {"spark.driver.memory": f"{gib}g"}


def _announce(spark: Any, say: Any) -> None:
    context = spark.sparkContext
    ui = context.uiWebUrl or "disabled (spark.ui.enabled=false)"
    say(f"spark {spark.version} on {context.master}: UI at {ui}")
