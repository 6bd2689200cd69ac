"""DuckDB warehouse: schema migrations, short-lived connections, idempotent writes, replica."""

from warehouse.connection import WarehouseBusy, connect
from warehouse.store import NoWarehouse, Replacement, Warehouse

__all__ = ["NoWarehouse", "Replacement", "Warehouse", "WarehouseBusy", "connect"]
