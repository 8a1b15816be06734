"""``lum ingest <source>``: load a data set into ``events``, ``items``, ``users`` and ``dlrm_samples``.

Each source is a module with a frozen ``Config`` and ``run(cfg, *, warehouse) -> dict``:
- ``movielens-1m`` / ``movielens-100k``: ``stages.ingest.movielens`` (``Config.dataset`` names which).
- ``synthetic``: ``stages.ingest.synthetic``, a seeded generator with preference structure.
- ``events``: ``stages.ingest.events``, a user's parquet/CSV log (``Config.path``).
Write semantics shared by all of them: ``stages.ingest.tables``. ``run_source`` maps a source name and
loose options (the CLI passes every flag) onto the right module's ``Config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from stages.core.config import from_mapping
from stages.ingest import events, movielens, synthetic
from stages.ingest.movielens import locate_movielens  # noqa: F401  (public: callers find the wheel here)
from stages.warehouse.facade import Warehouse

SOURCES = ("movielens-1m", "movielens-100k", "synthetic", "events")
MODULES: dict[str, ModuleType] = {"movielens-1m": movielens, "movielens-100k": movielens,
                                  "synthetic": synthetic, "events": events}


def source_config(source: str, opts: Mapping[str, Any] | None) -> Any:
    """The ``Config`` of ``source`` from ``opts``: its own fields among them, None values dropped.

    Unrelated keys (other sources' CLI flags) are ignored; a MovieLens source sets ``dataset`` itself.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown dataset {source!r}; choose one of {', '.join(SOURCES)}")
    cls = MODULES[source].Config
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in (opts or {}).items() if k in fields and v is not None}
    if MODULES[source] is movielens:
        given["dataset"] = source
    return from_mapping(cls, given)


def run_source(source: str, opts: Mapping[str, Any] | None, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Ingest ``source`` into ``warehouse``; returns a JSON-able summary (rows, days, versions, seconds).

    ``opts``: synthetic -> users, items, categories, days, seed, start (+ other ``synthetic.Config``
    fields); events -> path. Missing options take their defaults; unrelated keys are ignored.
    """
    cfg = source_config(source, opts)
    return MODULES[source].run(cfg, warehouse=warehouse)
