"""``TableStore``: what the writers, the staged writer and the Spark bridge need from a warehouse.

``stages.warehouse.facade.Warehouse`` satisfies it. The helpers depend on this protocol, not on the
facade, so imports point one way: facade -> writes / staging / spark_bridge -> commit -> stats.
"""

from __future__ import annotations

from typing import Protocol

from deltalake import DeltaTable


class TableStore(Protocol):
    """Delta tables by name under ``uri``; see ``Warehouse`` for the behaviour of each member."""

    uri: str  # the warehouse root (staging manifests live under ``<uri>/_staging``)
    storage_options: dict[str, str]  # delta-rs storage options ({} for local paths)

    def table_uri(self, name: str) -> str: ...

    def exists(self, name: str) -> bool: ...

    def delta_table(self, name: str, version: int | None = None) -> DeltaTable: ...

    def version(self, name: str) -> int | None: ...

    def set_table_metadata(self, name: str, metadata: dict[str, str]) -> None: ...
