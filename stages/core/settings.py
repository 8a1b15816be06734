"""Process-wide settings read from the environment (the ``--warehouse`` flag wins over ``LUM_WAREHOUSE``).

``LUM_WAREHOUSE``: warehouse URI, a local path or any delta-rs URI (s3://, gs://, abfss://); default
``./warehouse``. ``LUM_STORAGE_OPTIONS``: a JSON object passed to delta-rs as ``storage_options``.
``LUM_SPARK_MASTER``, ``LUM_SPARK_DRIVER_MEMORY``, ``LUM_SPARK_SHUFFLE_PARTITIONS``: the Spark session's
basics; ``LUM_SPARK_CONF``: extra ``spark.*`` settings as ``key=value`` pairs separated by ``;``, applied last.
``LUM_VACUUM_RETENTION_HOURS``: how long ``Warehouse.vacuum`` keeps files a newer version no longer needs
(default 168 = 7 days); it bounds how far back time travel and ``lum run join --reproduce`` reach.
Credentials in ``LUM_STORAGE_OPTIONS``, ``LUM_SPARK_CONF`` or the usual ``AWS_*``/``AZURE_*``/``GOOGLE_*``
variables are never echoed: errors here name keys and positions only, and ``stages.core.redact`` masks them
in every log line, error, summary and report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

DEFAULT_WAREHOUSE = "./warehouse"
DEFAULT_VACUUM_RETENTION_HOURS = 168  # 7 days of superseded files: a week of --as-of / --reproduce


def resolve_warehouse(cli_value: str | None = None) -> str:
    """The warehouse URI: the CLI value, else ``LUM_WAREHOUSE``, else ``./warehouse``.

    Local paths are made absolute so that Spark workers and delta-rs agree on them.
    """
    uri = cli_value or os.environ.get("LUM_WAREHOUSE") or DEFAULT_WAREHOUSE
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return uri.rstrip("/")


def storage_options() -> dict[str, str]:
    """delta-rs storage options for object stores, from ``LUM_STORAGE_OPTIONS`` (JSON)."""
    raw = os.environ.get("LUM_STORAGE_OPTIONS")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:  # its message names a position, never the text
        raise ValueError(f"LUM_STORAGE_OPTIONS is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("LUM_STORAGE_OPTIONS must be a JSON object of string values")
    return {str(k): str(v) for k, v in value.items()}


def vacuum_retention_hours() -> int:
    """Hours ``Warehouse.vacuum`` keeps superseded files: ``LUM_VACUUM_RETENTION_HOURS``, default 168 (7 days)."""
    raw = os.environ.get("LUM_VACUUM_RETENTION_HOURS")
    if raw is None or raw.strip() == "":
        return DEFAULT_VACUUM_RETENTION_HOURS
    try:
        hours = int(raw)
    except ValueError:
        hours = -1
    if hours < 0:
        raise ValueError(f"LUM_VACUUM_RETENTION_HOURS must be an integer >= 0, got {raw!r}")
    return hours


@dataclass(frozen=True)
class SparkSettings:
    """How to build the Spark session. Defaults fit a small local machine (2 cores); override per cluster."""

    master: str = "local[2]"  # any cluster master (spark://, yarn, k8s://) works unchanged
    driver_memory: str = "4g"  # local mode: the driver is the executor
    shuffle_partitions: int = 8  # 200 (Spark's default) is far too many tasks for 2 cores
    conf: dict[str, str] = field(default_factory=dict)  # extra spark.* settings, applied last

    @classmethod
    def from_env(cls) -> SparkSettings:
        conf: dict[str, str] = {}
        pairs = [p for p in (os.environ.get("LUM_SPARK_CONF") or "").split(";") if p.strip()]
        for n, pair in enumerate(pairs, 1):
            if "=" not in pair:  # the entry itself is not echoed: it may hold a credential
                raise ValueError(f"LUM_SPARK_CONF entry {n} of {len(pairs)} is not key=value")
            key, value = pair.split("=", 1)
            conf[key.strip()] = value.strip()
        return cls(
            master=os.environ.get("LUM_SPARK_MASTER", cls.master),
            driver_memory=os.environ.get("LUM_SPARK_DRIVER_MEMORY", cls.driver_memory),
            shuffle_partitions=int(os.environ.get("LUM_SPARK_SHUFFLE_PARTITIONS", cls.shuffle_partitions)),
            conf=conf,
        )
