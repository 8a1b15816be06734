"""The Spark session: one cached session per process, built from ``stages.core.settings.SparkSettings``.

Defaults fit a small local machine: ``local[2]``, driver memory 4g, 8 shuffle partitions, UTC
session time zone, UI off, driver bound to 127.0.0.1, workers running this interpreter
(``PYSPARK_PYTHON=sys.executable``, else workers lack pyarrow). Parquet timestamps are written as
INT64 microseconds (Spark's default INT96 is not what delta-rs and pyarrow expect). Any master and
extra ``spark.*`` settings come from ``LUM_SPARK_MASTER`` / ``LUM_SPARK_CONF`` and win over these.
Starting a session starts a JVM, so it is cached; ``stop_spark`` also shuts down the py4j gateway so
the JVM exits.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from stages.core.settings import SparkSettings

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_SESSION = None  # the cached SparkSession of this process


def base_conf(settings: SparkSettings) -> dict[str, str]:
    """Every ``spark.*`` setting of the session; ``settings.conf`` is applied last."""
    conf = {
        "spark.driver.memory": settings.driver_memory,
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",  # ds is the UTC day; timestamps print and bucket in UTC
        "spark.ui.enabled": "false",  # no port to bind, nothing to look at in tests and tasks
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",  # no DNS lookups of the machine's name
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # delta-rs/pyarrow read it as us
        "spark.sql.execution.arrow.pyspark.enabled": "true",  # fast toPandas/createDataFrame
        "spark.pyspark.python": sys.executable,
    }
    conf.update(settings.conf)
    return conf


def get_spark(settings: SparkSettings | None = None):
    """The process's SparkSession (created on first call from ``settings`` or the environment)."""
    global _SESSION
    with _LOCK:
        if _SESSION is not None and _SESSION.sparkContext._jsc is not None:
            return _SESSION
        settings = settings or SparkSettings.from_env()
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        # deferred: pyspark loads the JVM bridge; only Spark stages call get_spark
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.master(settings.master).appName("lum-pipeline")
        for key, value in base_conf(settings).items():
            builder = builder.config(key, value)
        _SESSION = builder.getOrCreate()
        _SESSION.sparkContext.setLogLevel("WARN")
        log.info("spark session started: master=%s", settings.master)
        return _SESSION


def stop_spark() -> None:
    """Stop the cached session and shut down the py4j gateway (the JVM exits with it)."""
    global _SESSION
    with _LOCK:
        if _SESSION is None:
            return
        # deferred: pyspark loads the JVM bridge; only a process that started a session gets here
        from pyspark import SparkContext

        _SESSION.stop()
        _SESSION = None
        gateway = SparkContext._gateway
        if gateway is not None:
            gateway.shutdown()
            SparkContext._gateway = None
            SparkContext._jvm = None
        log.info("spark session stopped")
