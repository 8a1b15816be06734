"""Checks of the model store ``<warehouse>/models/lum/``: findings as ``stages.verify.checks.finding``.

- ``model``: each version directory has meta.json (parses, names the version's day), vocab.json and model.pt,
  and the weights load into the model meta.json describes (``stages.model.store.load``) and are finite.
- ``checkpoint``: each version's checkpoint.pt (a warm start's optimizer state) reads (absent: a warning, the
  next warm start uses a fresh optimizer), and so does every interrupted run's ``_runs/<version>/checkpoint.pt``
  (unreadable: an error; pretrain would start that run over).
- ``leftover``: ``.tmp-*`` / ``.old-*`` directories of an interrupted publish (a warning; readers ignore them).
With ``ds``: the versions through ``ds`` itself and the newest through ``ds`` (the one infer of ``ds`` uses).
"""

from __future__ import annotations

from pathlib import Path

import torch

from stages.model import store
from stages.verify.checks import ERROR, MAX_ROWS_PER_CHECK, OK, WARN, finding
from stages.warehouse.facade import Warehouse

TABLE = "models/lum"


def check_models(wh: Warehouse, *, ds: str | None = None) -> list[dict]:
    try:
        root = store.store_root(wh.uri)
    except ValueError as exc:
        return [finding(TABLE, ds, "model", WARN, f"not checked: {exc}")]
    if not root.is_dir():
        return [finding(TABLE, ds, "model", OK, "no model versions")]
    entries = sorted(p for p in root.iterdir() if p.is_dir())
    versions = [p for p in entries if store.VERSION_RE.match(p.name)]
    if ds is not None:
        newest = store.latest_version(wh.uri, through=ds)
        versions = [p for p in versions if p.name in (store.version_name(ds), newest)]
    out: list[dict] = []
    problems: list[dict] = []
    for path in versions:
        problems += _check_version(wh, path)
    out += problems[:MAX_ROWS_PER_CHECK]
    if len(problems) > MAX_ROWS_PER_CHECK:
        out.append(finding(TABLE, "", "model", ERROR, f"... and {len(problems) - MAX_ROWS_PER_CHECK} more"))
    bad = {p["ds"] for p in problems if p["status"] == ERROR}
    n_ok = sum(1 for p in versions if _day(p) not in bad)
    if versions and n_ok:
        out.append(finding(TABLE, ds, "model", OK, f"{n_ok} of {len(versions)} version(s) load: meta.json, "
                           f"vocab.json, finite model.pt weights"))
    if not versions:
        out.append(finding(TABLE, ds, "model", OK, f"no model versions{' for ' + ds if ds else ''}"))
    out += [finding(TABLE, None, "leftover", WARN, f"{p.name}: leftover of an interrupted publish; safe to delete")
            for p in entries if p.name.startswith((".tmp-", ".old-")) and ds is None]
    out += _check_runs(root / "_runs", ds)
    return out


def _day(path: Path) -> str:
    match = store.VERSION_RE.match(path.name)
    return match.group(1) if match else ""


def _check_version(wh: Warehouse, path: Path) -> list[dict]:
    day = _day(path)
    if not (path / "meta.json").is_file():
        return [finding(TABLE, day, "model", ERROR, f"{path.name}: meta.json is missing (readers skip this version)")]
    try:
        loaded = store.load(wh.uri, path.name)
    except ValueError as exc:
        return [finding(TABLE, day, "model", ERROR, str(exc).splitlines()[0])]
    out = []
    through = str(loaded.meta.get("through_ds", ""))
    if through != day:
        out.append(finding(TABLE, day, "model", ERROR, f"{path.name}: meta.json says through_ds {through!r}"))
    bad = [n for n, p in loaded.model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        out.append(finding(TABLE, day, "model", ERROR, f"{path.name}: model.pt has NaN/inf in {', '.join(bad[:3])}"))
    try:
        ckpt = store.load_checkpoint(path / "checkpoint.pt")
    except ValueError as exc:
        return out + [finding(TABLE, day, "checkpoint", ERROR, str(exc).splitlines()[0])]
    if ckpt is None:
        out.append(finding(TABLE, day, "checkpoint", WARN, f"{path.name}: no checkpoint.pt (a warm start from "
                           f"it uses a fresh optimizer)"))
    return out


def _check_runs(runs: Path, ds: str | None) -> list[dict]:
    """Checkpoints of interrupted training runs (a finished run removes its folder when it publishes)."""
    if not runs.is_dir():
        return []
    out = []
    for path in sorted(p for p in runs.iterdir() if p.is_dir()):
        if ds is not None and path.name != store.version_name(ds):
            continue
        try:
            state = store.load_checkpoint(path / "checkpoint.pt")
        except ValueError as exc:
            out.append(finding(TABLE, _day(path), "checkpoint", ERROR,
                               f"{str(exc).splitlines()[0]} (pretrain would start this run over)"))
            continue
        detail = "no checkpoint yet" if state is None else f"resumable from step {state.get('step')}"
        out.append(finding(TABLE, _day(path), "checkpoint", OK, f"interrupted run _runs/{path.name}: {detail}"))
    return out
