"""The Spark session: one cached session per process, built from ``stages.core.settings.SparkSettings``.

A session starts a JVM, so it is built once and cached; ``stop_spark`` also shuts down the py4j gateway so
the JVM exits. ``base_conf`` holds what every session needs (UTC session time zone, INT64-microsecond parquet
timestamps that delta-rs and pyarrow read, workers running this interpreter so they have pyarrow); the master
and extra ``spark.*`` settings from the environment win over its defaults.
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


def out_of_memory(exc: BaseException) -> str | None:
    """A one-line ``lum: error`` text when ``exc`` (or its cause) is a Spark job that ran out of JVM memory (a
    ``Py4JJavaError`` naming ``java.lang.OutOfMemoryError``), naming the settings that give it more; else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        lines = [line.strip() for line in str(exc).splitlines() if "OutOfMemoryError" in line]
        if lines:
            at = lines[0].find("java.lang.OutOfMemoryError")
            kind = lines[0][max(at, 0):]
            settings = SparkSettings.from_env()
            return (f"Spark ran out of memory ({kind}); give its JVM more with LUM_SPARK_DRIVER_MEMORY (now "
                    f"{settings.driver_memory}) or cut the work finer with LUM_SPARK_SHUFFLE_PARTITIONS (now "
                    f"{settings.shuffle_partitions}); the failed step committed nothing")
        exc = exc.__cause__ or exc.__context__
    return None
