"""What a join output partition was built from, recorded in the custom metadata of the commit that wrote it.

``pin_inputs`` fixes the version of every table the join reads (the samples table, user_knowledge,
item_knowledge, items) before anything is read, and every read uses those versions, so the record stays
true when another run writes an input meanwhile. ``commit_metadata`` is the JSON stored under
``lum.provenance``: the days of the commit (one for ``run``; a knowledge group's days for the range join,
whose days share one commit, one knowledge partition and the same input versions), the input versions, the
knowledge ds and fallback, the model version, and the resolved join config (the spec's content, lag and
options) with its sha256. ``read_record`` finds the record of one partition (``lum run join --reproduce``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from stages.join.spec import JoinSpec
from stages.warehouse.facade import Warehouse
from stages.warehouse.history import LOG_RETENTION_KEY, partition_record

KEY = "lum.provenance"  # commit custom-metadata key
FORMAT = 1  # version of the record's layout


def input_tables(spec: JoinSpec) -> tuple[str, ...]:
    """Every table the join reads, in the record's order."""
    return (spec.samples_table, "user_knowledge", "item_knowledge", "items")


def pin_inputs(wh: Warehouse, spec: JoinSpec) -> dict[str, int | None]:
    """The latest version of every input table (None: the table does not exist); read once, before any read."""
    return {name: wh.version(name) for name in input_tables(spec)}


def config_record(spec: JoinSpec, lag: int, *, require_knowledge: bool, broadcast_items: bool,
                  similarity: str) -> dict[str, Any]:
    """The resolved join config as plain JSON values: the spec's content (not its file name), lag, options."""
    spec_fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}
    return {"spec": spec_fields, "lag_days": lag, "require_knowledge": require_knowledge,
            "broadcast_items": broadcast_items, "similarity": similarity}


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a ``config_record``."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def commit_metadata(*, days: Sequence[str], versions: Mapping[str, int | None], knowledge_ds: str | None,
                    fallback: str | None, model_version: str | None, config: Mapping[str, Any]) -> dict[str, str]:
    """``{KEY: json}`` for the commit writing ``days``."""
    record = {"format": FORMAT, "days": sorted(days), "inputs": dict(versions), "knowledge_ds": knowledge_ds,
              "fallback": fallback, "model_version": model_version, "config": dict(config),
              "config_hash": config_hash(config)}
    return {KEY: json.dumps(record, sort_keys=True, separators=(",", ":"))}


def read_record(wh: Warehouse, table: str, ds: str) -> tuple[int, dict[str, Any]]:
    """(commit version, record) of partition ``ds`` of ``table``; ValueError when it has none, when the
    partition changed after that commit, or when the record is damaged (hash mismatch, unknown format)."""
    if ds not in wh.partitions(table):
        raise ValueError(f"{table} has no partition ds={ds}")
    found = partition_record(wh, table, ds, KEY)
    if found is None:
        raise ValueError(f"{table}[{ds}] has no recorded provenance (written before joins recorded it, or its "
                         f"commit left the log after {LOG_RETENTION_KEY}); rerun lum run join --ds {ds} to record one")
    version, record = found
    if record.get("format") != FORMAT:
        raise ValueError(f"{table}[{ds}]: provenance format {record.get('format')!r} at version {version} is not "
                         f"{FORMAT}, the one this code reads")
    if config_hash(record.get("config") or {}) != record.get("config_hash"):
        raise ValueError(f"{table}[{ds}]: the config recorded at version {version} does not match its config_hash")
    return version, record


def spec_of(record: Mapping[str, Any]) -> JoinSpec:
    """The ``JoinSpec`` of a record's config."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record["config"]["spec"].items()}
    known = {f.name for f in dataclasses.fields(JoinSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"recorded join spec has unknown field(s) {', '.join(unknown)}")
    return JoinSpec(**fields)
