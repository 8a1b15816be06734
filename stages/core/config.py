"""Typed stage configs from files and ``--set key=value`` overrides.

A config file is TOML (``.toml``) or JSON. It may hold one table per stage (``[pretrain]``,
``[infer]`` ...); a stage reads its own table, or the whole file when there is none. Unknown keys
are an error that names the key, so a typo never silently falls back to a default. A config may nest
other config dataclasses (pretrain's ``model`` and ``train``): their options are set by a dotted key, by
their own name when it is unique, or by a nested table (``[pretrain.model]``); see `from_mapping`.
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
    """Build dataclass ``cls``, and the config dataclasses nested in it, from a mapping.

    Keys: a field of ``cls``; a dotted path (``model.d_model``); a nested field by its own name when no other
    field has it (``d_model``); or a nested config's name with a table of its options (``[pretrain.model]``)
    or an instance. Later keys win; unset nested fields keep ``cls``'s defaults. Unknown or ambiguous keys
    (the error names the candidate paths) and wrong types raise ``ValueError``.
    """
    assignments: list[tuple[tuple[str, ...], Any]] = []
    unknown: list[str] = []
    for key, value in dict(mapping or {}).items():
        try:
            path = _resolve(cls, str(key))
        except _UnknownKey:
            unknown.append(str(key))
            continue
        assignments += _expand(cls, path, value)
    if unknown:
        known = sorted(option_names(cls))
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return _build(cls, assignments, cls.__name__, None)


def option_names(cls: type) -> set[str]:
    """The undotted keys ``from_mapping(cls, ...)`` knows: the fields of ``cls`` and of its nested configs
    (a name several of them share is included: using it raises, naming the dotted paths to use instead)."""
    return set(_leaf_paths(cls)) | set(_nested_fields(cls))


def has_option(cls: type, key: str) -> bool:
    """Whether ``key`` (undotted, or dotted into a nested config) names an option of ``cls``."""
    try:
        _resolve(cls, key)
    except _UnknownKey:
        return False
    except ValueError:  # ambiguous: an option, which from_mapping refuses with the candidates
        return True
    return True


def to_flat_dict(cfg: Any) -> dict[str, Any]:
    """``to_dict`` with the fields of nested configs hoisted to the top level (names must be unique).

    The form a config keeps when some of its fields are grouped into nested configs: what a model version
    stores and what its config hash covers."""
    out: dict[str, Any] = {}
    for name, value in to_dict(cfg).items():
        field_value = getattr(cfg, name)
        inner = to_flat_dict(field_value) if dataclasses.is_dataclass(field_value) else {name: value}
        for key, v in inner.items():
            if key in out:
                raise ValueError(f"{type(cfg).__name__}: option {key!r} appears twice; it has no flat form")
            out[key] = v
    return out


class _UnknownKey(ValueError):
    pass


def _nested_fields(cls: type) -> dict[str, type]:
    """Fields of ``cls`` whose type is itself a dataclass (a nested config): name -> type."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name])}


def _leaf_paths(cls: type) -> dict[str, list[tuple[str, ...]]]:
    """Every plain (non-config) field of ``cls`` and its nested configs: its name -> the paths to it."""
    nested = _nested_fields(cls)
    out: dict[str, list[tuple[str, ...]]] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in nested:
            for name, paths in _leaf_paths(nested[f.name]).items():
                out.setdefault(name, []).extend((f.name, *p) for p in paths)
        else:
            out.setdefault(f.name, []).append((f.name,))
    return out


def _resolve(cls: type, key: str) -> tuple[str, ...]:
    """The field path ``key`` names in ``cls``: ``model.d_model`` / ``d_model`` -> ("model", "d_model")."""
    nested = _nested_fields(cls)
    head, dot, rest = key.partition(".")
    if dot:
        if head not in nested:
            raise _UnknownKey(key)
        try:
            return (head, *_resolve(nested[head], rest))
        except _UnknownKey:
            raise _UnknownKey(key) from None
    paths = list(_leaf_paths(cls).get(key, [])) + ([(key,)] if key in nested else [])
    if not paths:
        raise _UnknownKey(key)
    if len(paths) > 1:
        raise ValueError(f"{cls.__name__} option {key!r} is ambiguous: use one of "
                         f"{', '.join('.'.join(p) for p in paths)}")
    return paths[0]


def _expand(cls: type, path: tuple[str, ...], value: Any) -> list[tuple[tuple[str, ...], Any]]:
    """(leaf path, value) assignments for ``path = value``; a nested config's table or instance expands into
    one assignment per key / field."""
    owner = cls
    for name in path[:-1]:
        owner = _nested_fields(owner)[name]
    sub = _nested_fields(owner).get(path[-1])
    if sub is None:
        return [(path, value)]
    if isinstance(value, sub):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(sub)}
    if not isinstance(value, Mapping):
        raise ValueError(f"{cls.__name__}.{'.'.join(path)} takes a table of {sub.__name__} options, got {value!r}")
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, v in value.items():
        try:
            inner = _resolve(sub, str(key))
        except _UnknownKey:
            known = ", ".join(sorted(option_names(sub)))
            raise ValueError(f"unknown {cls.__name__}.{'.'.join(path)} option {key!r}; known: {known}") from None
        out += _expand(cls, (*path, *inner), v)
    return out


def _build(cls: type[T], assignments: list[tuple[tuple[str, ...], Any]], where: str, base: Any) -> T:
    """``cls`` with the assignments applied (in order) over ``base`` (an instance) or the field defaults."""
    hints = typing.get_type_hints(cls)
    nested = _nested_fields(cls)
    kwargs: dict[str, Any] = {}
    inner: dict[str, list[tuple[tuple[str, ...], Any]]] = {}
    for path, value in assignments:
        if len(path) == 1:
            kwargs[path[0]] = _coerce(where, path[0], hints.get(path[0]), value)
        else:
            inner.setdefault(path[0], []).append((path[1:], value))
    for name, sub_assignments in inner.items():
        sub_base = getattr(base, name) if base is not None else _field_default(cls, name)
        kwargs[name] = _build(nested[name], sub_assignments, f"{where}.{name}", sub_base)
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    return cls(**kwargs)


def _field_default(cls: type, name: str) -> Any:
    """The default value of field ``name`` of ``cls`` (None when it has none)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


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
