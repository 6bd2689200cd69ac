"""DuckDB warehouse: schema migrations, short-lived connections, idempotent writes, replica."""

from warehouse.connection import WarehouseBusy, connect
from warehouse.store import Warehouse

__all__ = ["Warehouse", "WarehouseBusy", "connect"]
