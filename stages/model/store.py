"""LUM model versions under ``<warehouse>/models/lum/<version>/``, written atomically.

A version holds ``model.pt`` (state_dict), ``vocab.json``, ``meta.json`` (through_ds, configs, metrics, dim,
parent version) and ``checkpoint.pt`` (optimizer, scheduler, step, RNG states: what a warm start needs).
``version = "lum-<through_ds>"``, the last day of events seen: a rerun of day D (or ``--retrain`` through D)
replaces ``lum-D``, with the same content for the same seed and inputs. A version is written to
``.tmp-<version>-<pid>`` beside it and renamed into place (an old one is renamed aside first), so a reader sees a
whole old or new directory; ``latest_version`` ignores the ``.tmp-*`` a crash leaves. A running job's
checkpoints live in ``_runs/<version>/checkpoint.pt`` until it publishes. Limits: local (or ``file://``)
warehouses only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages.warehouse.facade import Warehouse

import torch

from stages.core.phases import phase
from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab

VERSION_RE = re.compile(r"^lum-(\d{4}-\d{2}-\d{2})$")


def store_root(warehouse: Warehouse | str) -> Path:
    """``<warehouse>/models/lum`` as a local path; remote URIs raise ValueError."""
    warehouse = getattr(warehouse, "uri", warehouse).removeprefix("file://")
    if "://" in warehouse:
        raise ValueError(f"model store supports local warehouses only, got {warehouse!r}")
    return Path(warehouse) / "models" / "lum"


def version_name(through_ds: str) -> str:
    return f"lum-{through_ds}"


def run_dir(warehouse: str, version: str) -> Path:
    """Scratch directory of a training run in progress (its checkpoints)."""
    return store_root(warehouse) / "_runs" / version


def list_versions(warehouse: str) -> list[str]:
    """Complete versions (directory with meta.json), oldest first."""
    root = store_root(warehouse)
    if not root.is_dir():
        return []
    out = [p.name for p in root.iterdir() if VERSION_RE.match(p.name) and (p / "meta.json").is_file()]
    return sorted(out)


def latest_version(warehouse: str, *, through: str) -> str | None:
    """Newest complete version whose trained-through day is <= ``through`` (None when there is none)."""
    ok = [v for v in list_versions(warehouse) if VERSION_RE.match(v).group(1) <= through]  # type: ignore[union-attr]
    return ok[-1] if ok else None


def publish(warehouse: str, version: str, files: dict[str, Any]) -> Path:
    """Atomically write a version: ``files`` maps file name -> bytes | str | (torch object to save)."""
    with phase("model_publish", version):
        return _publish(warehouse, version, files)


def _publish(warehouse: str, version: str, files: dict[str, Any]) -> Path:
    root = store_root(warehouse)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{version}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, content in files.items():
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            torch.save(content, path)
    final = root / version
    old = root / f".old-{version}-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


@dataclass
class LoadedModel:
    """A loaded version: ``model`` (LUM, eval mode), ``meta`` (dict), ``vocab`` (stages.model.vocab.Vocab)."""

    version: str
    model: torch.nn.Module
    meta: dict
    vocab: Vocab
    path: Path


def load(warehouse: str, version: str, device: str = "cpu") -> LoadedModel:
    """Load a version for inference. Raises ValueError naming the version when it does not exist, and naming
    the version and the file when one of its files is unreadable or does not match meta.json."""
    path = store_root(warehouse) / version
    if not (path / "meta.json").is_file():
        have = list_versions(warehouse)
        raise ValueError(f"model version {version!r} not found under {store_root(warehouse)} (have: {have[-3:]})")
    meta = _read_version_file(path, "meta.json", lambda p: _json_object(p.read_text()))
    vocab = _read_version_file(path, "vocab.json", lambda p: Vocab.from_json(p.read_text()))
    mc = dict(meta.get("model_config") or {})
    mc.setdefault("cond_loss_weight", 0.0)  # versions before the next-condition head have no head weights
    mc.setdefault("time_features", False)   # versions before time features have no gap/popularity weights
    try:
        model = build_model(ModelConfig(**mc), vocab)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model version {version}: meta.json's model_config is unusable ({_first_line(exc)})") from None
    state = _read_version_file(path, "model.pt",
                               lambda p: torch.load(p, map_location="cpu", weights_only=True))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"model version {version}: model.pt does not match meta.json and vocab.json "
                         f"({_first_line(exc)})") from None
    model.to(device).eval()
    return LoadedModel(version=version, model=model, meta=meta, vocab=vocab, path=path)


def load_checkpoint(path: Path) -> dict | None:
    """The training checkpoint dict at ``path`` (checkpoint.pt) or None when absent; ``ValueError`` naming
    the file (and, inside a version directory, the version) when it is unreadable: truncated or not a
    checkpoint. What to do then is the caller's choice (a run's own resume checkpoint: start over)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError ... on a damaged file
        raise ValueError(f"{_owner(path)}{path.name} is unreadable ({_first_line(exc)}): {path}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{_owner(path)}{path.name} is unreadable (holds a {type(state).__name__}, "
                         f"not a checkpoint dict): {path}")
    return state


def _read_version_file(path: Path, name: str, read: Callable[[Path], Any]) -> Any:
    """``read(path / name)``; any failure becomes ``model version V: <name> is unreadable (...)``."""
    try:
        return read(path / name)
    except Exception as exc:  # a damaged file fails in many ways (OSError, JSON, zip, unpickling): name it
        raise ValueError(f"model version {path.name}: {name} is unreadable ({_first_line(exc)})") from None


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _owner(path: Path) -> str:
    """``model version V: `` for a file of a version, ``training run V: `` for one under ``_runs``, else ``""``."""
    if not VERSION_RE.match(path.parent.name):
        return ""
    return f"{'training run' if path.parent.parent.name == '_runs' else 'model version'} {path.parent.name}: "


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint atomically (temp file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with phase("checkpoint", f"{path.parent.name} step {state.get('step')}"):
        torch.save(state, tmp)
        os.replace(tmp, path)
