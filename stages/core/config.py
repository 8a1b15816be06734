"""Typed stage configs from files and ``--set key=value`` overrides.

A config file is TOML (``.toml``) or JSON. It may hold one table per stage (``[pretrain]``,
``[infer]`` ...); a stage reads its own table, or the whole file when there is none. Unknown keys
are an error that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load_config_file(path: str | None, section: str | None = None) -> dict[str, Any]:
    """Read a TOML/JSON config file; return ``section``'s table if present, else the whole file."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config file not found: {path}")
    data = read_toml_or_json(p, what="--config file")
    if section and isinstance(data.get(section), dict):
        return dict(data[section])
    # Other stages' tables ([infer], [join] ...) are theirs; a stage without a table takes the flat keys only.
    return {k: v for k, v in data.items() if not isinstance(v, dict)}


def read_toml_or_json(path: Path, *, what: str) -> dict[str, Any]:
    """Parse ``path`` as JSON (``.json``) or TOML (anything else); a parse error names ``what`` and the file."""
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid {path.suffix.lstrip('.').upper() or 'TOML'}: {exc}") from None


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["lr=0.001", "n_layers=4"]`` -> ``{"lr": 0.001, "n_layers": 4}`` (values parsed as JSON if possible)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ``ValueError``."""
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in mapping.items():
        kwargs[key] = _coerce(cls.__name__, key, hints.get(key), value)
    return cls(**kwargs)


def _coerce(owner: str, key: str, hint: Any, value: Any) -> Any:
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        return _coerce(owner, key, non_none[0], value) if len(non_none) == 1 else value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{owner}.{key} must be a list, got {value!r}")
        inner = args[0] if args else None
        items = [_coerce(owner, key, inner, v) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ValueError(f"{owner}.{key} must be true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{owner}.{key} must be a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ValueError(f"{owner}.{key} must be {hint.__name__}, got {value!r}") from None
    if hint is str:
        return str(value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
