"""DuckDB warehouse: schema migrations, short-lived connections, idempotent writes, replica."""

from warehouse.connection import WarehouseBusy, connect
from warehouse.store import Replacement, Warehouse

__all__ = ["Replacement", "Warehouse", "WarehouseBusy", "connect"]
