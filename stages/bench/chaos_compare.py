"""Compare a warehouse with a reference one, table by table and model version by model version.

A table matches when it has the same partitions and table configuration, no duplicate key (``ds`` + the
schema's key), and, sorted by that key, every non-float column equal and every float column (scalars, lists,
fixed-size lists) equal within ``atol`` (NaN equal to NaN, nulls in the same places). Model versions match
when the same versions exist and each one's weights and optimizer state are within ``atol``, its vocabulary is
equal, and its meta agrees on parent, configs and the training metrics that do not depend on the wall clock or
on where a run resumed. Each result says what differed and the largest float difference seen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

import schemas
from stages.model import store as model_store
from stages.warehouse.facade import Warehouse

META_KEYS = ("version", "through_ds", "parent", "config", "model_config", "dim", "features")
METRIC_KEYS = ("steps", "train_sequences", "steps_per_epoch", "loss", "accuracy", "logit_scale", "cond_loss")


def _is_float(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _is_float(t.value_type)
    return pa.types.is_floating(t)


def _values(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values flattened, list lengths or a 1 per row); nulls become NaN and length -1."""
    arr = col.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(arr)
        return pc.fill_null(flat.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False), lengths
    values = pc.fill_null(arr.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
    return values, np.where(arr.is_null().to_numpy(zero_copy_only=False), -1, 1)


def float_diff(a: pa.ChunkedArray, b: pa.ChunkedArray) -> float:
    """Largest |a - b| over the values of two float columns of equal length; inf when shapes or NaNs differ."""
    va, la = _values(a)
    vb, lb = _values(b)
    if not np.array_equal(la, lb) or va.shape != vb.shape or not np.array_equal(np.isnan(va), np.isnan(vb)):
        return float("inf")
    ok = ~np.isnan(va)
    return float(np.max(np.abs(va[ok] - vb[ok]))) if ok.any() else 0.0


def duplicate_keys(table: pa.Table, keys: list[str]) -> int:
    """Rows beyond the first of each key."""
    if table.num_rows == 0:
        return 0
    counts = table.group_by(keys).aggregate([([], "count_all")])
    return int(pc.sum(pc.subtract(counts.column("count_all"), 1)).as_py() or 0)


def compare_table(ref: Warehouse, got: Warehouse, name: str, atol: float) -> dict[str, Any]:
    """{"ok", "problem" (None or one line), "rows", "max_abs_diff"} for table ``name``."""
    spec = schemas.get(name).SPEC
    out: dict[str, Any] = {"ok": False, "problem": None, "rows": None, "max_abs_diff": 0.0}
    if ref.exists(name) != got.exists(name):
        out["problem"] = "missing" if ref.exists(name) else "unexpected table"
        return out
    keys = [*spec.partition_by, *spec.key]
    a = ref.read(name)
    b = got.read(name)
    out["rows"] = b.num_rows
    dups = duplicate_keys(b, keys)
    problems = []
    if dups:
        problems.append(f"{dups} duplicate key rows")
    if spec.partition_by and ref.partitions(name) != got.partitions(name):
        problems.append(f"partitions {got.partitions(name)} != {ref.partitions(name)}")
    if ref.table_metadata(name) != got.table_metadata(name):
        problems.append("table configuration differs")
    if a.num_rows != b.num_rows:
        problems.append(f"{b.num_rows} rows != {a.num_rows}")
    elif a.schema.names != b.schema.names:
        problems.append(f"columns {b.schema.names} != {a.schema.names}")
    else:
        order = [(k, "ascending") for k in keys]
        a, b = a.sort_by(order), b.sort_by(order)
        for col in a.schema.names:
            if _is_float(a.schema.field(col).type):
                diff = float_diff(a.column(col), b.column(col))
                out["max_abs_diff"] = max(out["max_abs_diff"], diff)
                if diff > atol:
                    problems.append(f"column {col} differs by {diff:.3g}")
            elif not a.column(col).equals(b.column(col)):
                problems.append(f"column {col} differs")
    out["ok"] = not problems
    out["problem"] = "; ".join(problems) or None
    return out


def _tensor_diff(a: Any, b: Any) -> float:
    """Largest |a - b| over nested dicts/lists of tensors; inf when structure, shapes or non-tensors differ."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return float("inf")
        if not a.is_floating_point():
            return 0.0 if torch.equal(a, b) else float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf")
        return max([_tensor_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max([_tensor_diff(x, y) for x, y in zip(a, b)] or [0.0])
    return 0.0 if a == b else float("inf")


def compare_version(ref_dir: Path, got_dir: Path, atol: float) -> dict[str, Any]:
    """{"ok", "problem", "max_abs_diff"} of one model version directory."""
    problems, worst = [], 0.0
    load = lambda p: torch.load(p, map_location="cpu", weights_only=False)  # noqa: E731
    weights = _tensor_diff(load(ref_dir / "model.pt"), load(got_dir / "model.pt"))
    optimizer = _tensor_diff(load(ref_dir / "checkpoint.pt"), load(got_dir / "checkpoint.pt"))
    worst = max(weights, optimizer)
    if weights > atol:
        problems.append(f"weights differ by {weights:.3g}")
    if optimizer > atol:
        problems.append(f"optimizer state differs by {optimizer:.3g}")
    if (ref_dir / "vocab.json").read_text() != (got_dir / "vocab.json").read_text():
        problems.append("vocabulary differs")
    ma, mb = (json.loads((d / "meta.json").read_text()) for d in (ref_dir, got_dir))
    problems += [f"meta {k} differs" for k in META_KEYS if ma.get(k) != mb.get(k)]
    for key in METRIC_KEYS:
        x, y = ma["metrics"].get(key), mb["metrics"].get(key)
        if isinstance(x, float) and isinstance(y, float):
            if not (abs(x - y) <= atol or (np.isnan(x) and np.isnan(y))):
                problems.append(f"metric {key} {y!r} != {x!r}")
        elif x != y:
            problems.append(f"metric {key} {y!r} != {x!r}")
    return {"ok": not problems, "problem": "; ".join(problems) or None, "max_abs_diff": worst}


def compare(ref_uri: str, got_uri: str, *, atol: float) -> dict[str, Any]:
    """Every table and model version of ``got_uri`` against ``ref_uri``.

    Returns {"ok", "differs": [names], "tables": {name: result}, "models": {version: result},
    "max_abs_diff"}; a model version present on one side only is reported under its name."""
    ref, got = Warehouse(ref_uri), Warehouse(got_uri)
    tables = {name: compare_table(ref, got, name, atol) for name in schemas.TABLES
              if ref.exists(name) or got.exists(name)}
    ref_versions = set(model_store.list_versions(ref_uri))
    got_versions = set(model_store.list_versions(got_uri))
    models: dict[str, dict[str, Any]] = {}
    for version in sorted(ref_versions | got_versions):
        if version not in got_versions or version not in ref_versions:
            models[version] = {"ok": False, "problem": "missing" if version in ref_versions else "unexpected",
                               "max_abs_diff": 0.0}
            continue
        models[version] = compare_version(model_store.store_root(ref_uri) / version,
                                          model_store.store_root(got_uri) / version, atol)
    results = {**tables, **models}
    differs = [name for name, r in results.items() if not r["ok"]]
    return {"ok": not differs, "differs": differs, "tables": tables, "models": models,
            "max_abs_diff": max([r["max_abs_diff"] for r in results.values() if r["max_abs_diff"] != float("inf")]
                                or [0.0])}


def stray_files(uri: str) -> int:
    """Data files under the table directories that no snapshot names (what a crash left; vacuum removes them)."""
    wh, count = Warehouse(uri), 0
    for name in schemas.TABLES:
        if not wh.exists(name):
            continue
        root = Path(wh.table_uri(name))
        named = set(pa.table(wh.delta_table(name).get_add_actions(flatten=True)).column("path").to_pylist())
        on_disk = {str(p.relative_to(root)) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}
        count += len(on_disk - named)
    return count
