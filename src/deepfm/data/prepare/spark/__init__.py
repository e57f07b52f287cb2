"""The prepare stage on Apache Spark (``deepfm prepare --engine spark``): the same prepared folder
as the default engine, from a laptop (``local[*]``) to a cluster (``--master spark://...``, ``yarn``).

The two engines are two implementations of one stage held to a parity contract
(``tests/test_spark_prepare.py``): on the same spec and seed they give the identical feature map
and identical encoded rows, except quantile edges, which Spark finds with ``approxQuantile``
(relative rank error :data:`~deepfm.data.prepare.spark.stats.QUANTILE_ERROR`), and the mean and
standard deviation of standardised fields, equal up to the order of floating-point sums.
pyspark is imported only here, after the requirements are checked (``deepfm[spark]``, Java 17+).
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepfm.data.options import EngineOptions, PrepareOptions
from deepfm.data.prepare.spark.session import spark_session
from deepfm.data.spec import DatasetSpec
from deepfm.errors import ConfigError, DeepFMError, brief


def build(
    spec: DatasetSpec,
    options: PrepareOptions,
    out: Path,
    engine: EngineOptions,
    progress: bool = True,
    shards: int = 0,
) -> None:
    """Prepare ``spec`` into the empty folder ``out`` with Spark (see :mod:`.job`; ``shards`` > 0:
    the training split as that many shards)."""

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    files = [*spec.input_files().values(), *spec.table_files().values()]
    size = sum(path.stat().st_size for paths in files for path in paths)
    with spark_session(engine, say, size) as spark:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        from deepfm.data.prepare.spark.job import run

        try:
            run(spark, spec, options, out, say, shards)
        except DeepFMError:
            raise
        except (PySparkException, Py4JError) as exc:  # a job that failed on the cluster
            cause = getattr(exc, "java_exception", None)  # py4j's first line names only the call
            shown = brief(RuntimeError(str(cause)) if cause is not None else exc, 300)
            if "Connection refused" in shown:  # the JVM is gone (py4j cannot reach it)
                shown = (
                    "the Spark JVM stopped (the log above names why: java.lang.OutOfMemoryError asks "
                    "for more memory, e.g. --conf spark.driver.memory=4g with local[N], or "
                    "spark.executor.memory on a cluster)"
                )
            raise ConfigError(f"--engine spark: a Spark job failed: {shown}") from exc
