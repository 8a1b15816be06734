"""Table contracts: one module per Delta table (schema, partition columns, key, validation).

``schemas.get("events")`` returns the module; every module has ``NAME``, ``PARTITION_BY``, ``KEY``,
``SPEC`` (a ``schemas._base.TableSpec``), ``schema(dim=None)``, ``validate(table, *, ds=None)`` and
``spark_schema(dim=None)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TABLES: tuple[str, ...] = (
    "events", "items", "users", "user_sequences", "user_knowledge", "item_knowledge",
    "dlrm_samples", "dlrm_training",
)


def get(name: str) -> ModuleType:
    """The schema module of table ``name``; ``ValueError`` for an unknown table."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return importlib.import_module(f"schemas.{name}")
