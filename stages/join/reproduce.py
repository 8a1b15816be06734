"""``lum run join --ds D --reproduce``: rebuild partition D of the join's output from its recorded provenance
and compare it with the partition as written; nothing is written.

The record (stages.join.provenance) names the input versions; each must still load and hold every file of
the partitions the rebuild reads (stages.warehouse.history.check_readable: otherwise a one-line error naming
the table, the version and the vacuum retention). The rebuild runs the join's own code (``prepare``,
``join_days``: the same frame and knowledge checks) on those pinned snapshots with the recorded config. Day D
alone is rebuilt even when a range commit wrote it with other days: each output row depends on its own sample.
Equality is exact: rows sorted by key, every column, floats compared bit for bit. Verifying rather than
rewriting: a rewrite of the same content would add a commit and new files for nothing, and a rebuild that
differs must not silently replace what consumers already read.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from stages.core.dates import check_ds, days_before
from stages.join import provenance
from stages.join.inputs import sample_rows_by_day
from stages.join.plan import choose_knowledge_ds
from stages.join.spec import JoinSpec
from stages.join.stage import Config, check_config, join_days, prepare
from stages.warehouse.facade import Warehouse
from stages.warehouse.history import check_readable

_INT_OF_WIDTH = {16: pa.int16(), 32: pa.int32(), 64: pa.int64()}


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _conform(col: pa.ChunkedArray, target: pa.DataType) -> pa.Array:
    """``col`` as one array of ``target``'s type; list-likes stay as they are (``_bits`` compares any list
    kind by lengths and values; pyarrow's list -> fixed_size_list cast crashes on an all-null chunk with
    no values)."""
    arr = col.combine_chunks()
    return arr if _is_list(arr.type) and _is_list(target) else arr.cast(target)


def _bits(arr: pa.Array) -> list[pa.Array]:
    """Arrays whose ``equals`` is bit-exact equality of ``arr``: floats as their integer bit patterns (NaN
    equals the same NaN, -0.0 differs from 0.0), lists as validity + lengths + their values, recursively."""
    t = arr.type
    if pa.types.is_floating(t):
        return [arr.is_null(), pc.fill_null(arr.view(_INT_OF_WIDTH[t.bit_width]), 0)]
    if _is_list(t):
        return [arr.is_null(), pc.fill_null(pc.list_value_length(arr), -1)] + _bits(pc.list_flatten(arr))
    if pa.types.is_struct(t):
        return [arr.is_null()] + [part for child in arr.flatten() for part in _bits(child)]
    return [arr]


def first_difference(rebuilt: pa.Table, recorded: pa.Table, key: tuple[str, ...]) -> str | None:
    """None when the two tables hold the same rows bit for bit (sorted by ``key``, every column of
    ``recorded``, ``rebuilt`` cast to its types); otherwise one line naming the first difference."""
    names = recorded.column_names
    if sorted(rebuilt.column_names) != sorted(names):
        return f"columns {sorted(rebuilt.column_names)} rebuilt, {sorted(names)} recorded"
    if rebuilt.num_rows != recorded.num_rows:
        return f"{rebuilt.num_rows} rows rebuilt, {recorded.num_rows} recorded"
    try:
        rebuilt = pa.table([_conform(rebuilt.column(f.name), f.type) for f in recorded.schema], names=names)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return f"rebuilt columns do not cast to the recorded types: {str(exc).splitlines()[0]}"
    order = [(k, "ascending") for k in key]
    a, b = rebuilt.sort_by(order), recorded.sort_by(order)
    for name in names:
        col_a, col_b = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if _is_list(col_a.type) and col_a.type.value_type != col_b.type.value_type:
            return f"column {name}: {col_a.type} rebuilt, {col_b.type} recorded"
        if all(x.equals(y) for x, y in zip(_bits(col_a), _bits(col_b))):
            continue
        values_a, values_b = col_a.to_pylist(), col_b.to_pylist()
        row = next((i for i, (x, y) in enumerate(zip(values_a, values_b)) if repr(x) != repr(y)), 0)
        at = {k: a.column(k)[row].as_py() for k in key}
        return f"column {name} differs, first at {at}: {values_a[row]!r} rebuilt, {values_b[row]!r} recorded"
    return None


def _check_inputs(wh: Warehouse, spec: JoinSpec, versions: dict[str, int | None], ds: str,
                  k_ds: str | None) -> None:
    """Every pinned snapshot the rebuild reads still loads and has all its files (else ValueError)."""
    needed = {spec.samples_table: [ds], "items": None}
    if k_ds is not None:
        needed.update({"user_knowledge": [k_ds], "item_knowledge": [k_ds]})
    for name, days in needed.items():
        if versions.get(name) is None:
            raise ValueError(f"the provenance of {spec.output_table}[{ds}] records no version of {name}")
        check_readable(wh, name, versions[name], days=days)


def reproduce(cfg: Config, *, ds: str, warehouse: Warehouse | str) -> dict[str, Any]:
    """Rebuild partition ``ds`` from its recorded inputs and compare; returns a JSON-able summary with
    ``equal`` and, when unequal, ``difference`` (one line). ``cfg`` only names the output table (its spec)
    and is compared with the recorded config (``config_matches_current``); the rebuild uses the record's."""
    wh = Warehouse.of(warehouse)
    check_ds(ds)
    current_spec, current_lag = check_config(cfg)
    table = current_spec.output_table
    commit, record = provenance.read_record(wh, table, ds)
    spec = provenance.spec_of(record)
    config = record["config"]
    lag = int(config["lag_days"])
    versions = {name: record["inputs"].get(name) for name in provenance.input_tables(spec)}
    k_ds = record["knowledge_ds"]
    _check_inputs(wh, spec, versions, ds, k_ds)
    planned, _ = choose_knowledge_ds(wh, days_before(ds, lag), versions)
    if planned != k_ds:
        raise ValueError(f"{table}[{ds}]: the pinned inputs choose knowledge ds {planned}, the record says {k_ds}")
    run_cfg = Config(lag_days=lag, require_knowledge=bool(config["require_knowledge"]),
                     broadcast_items=bool(config["broadcast_items"]), similarity=str(config["similarity"]))
    prep = prepare(run_cfg, spec, lag, wh, versions)
    samples_version = versions[spec.samples_table]
    samples = wh.read_spark(prep.spark, spec.samples_table, ds=ds, version=samples_version)
    n_samples = sample_rows_by_day(wh, spec, [ds], samples, samples_version)[ds]
    joined = join_days(run_cfg, prep, samples, {ds: n_samples}, k_ds)
    model_version = joined.model_version
    try:
        rebuilt = joined.frame().toArrow()
        if joined.knowledge is not None:
            joined.knowledge.check_users()  # observed by the job that just built the rows
    finally:
        joined.release()
    difference = first_difference(rebuilt, wh.read(table, ds=ds), tuple(schemas.get(table).SPEC.key))
    current = provenance.config_record(current_spec, current_lag, require_knowledge=cfg.require_knowledge,
                                       broadcast_items=cfg.broadcast_items, similarity=cfg.similarity)
    return {"reproduced": True, "table": table, "ds": ds, "rows": n_samples, "equal": difference is None,
            "difference": difference, "provenance_version": commit, "inputs": versions, "knowledge_ds": k_ds,
            "model_version": model_version, "config_hash": record["config_hash"],
            "config_matches_current": provenance.config_hash(current) == record["config_hash"]}
