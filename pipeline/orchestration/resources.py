"""What assets, checks and sensors receive as parameters: settings, the exchange, the warehouse.

Nothing here is read at import time: a resource loads its configuration when a run or a
sensor tick first asks for it, so a test changes configuration in-process by passing other
resources (`dg.materialize(..., resources=...)`, `dg.build_sensor_context(resources=...)`).

The source is decided ONCE. The runtime (`signalbox up`, `backfill`) decides the home's source
(`pipeline.exchanges.sources.home_source`: recorded in `<home>/source.json`, checked against
the configuration, never mixed), opens that exchange (starting the replay exchange if it is
ours), verifies it is the warehouse's source, and hands the resulting `Endpoint` to the
Dagster processes it starts as ONE value, `SIGNALBOX_ENDPOINT` (its JSON,
`pipeline.runtime.processes.source_env`).
`ExchangeResource` takes that decision as it is: it does not resolve URLs from the
configuration again, and it never chooses a source. Without it (a Dagster process started by
hand, a test) the resource reads the home's record, like every other reader
(`sources.current`), and refuses a home that has none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.exchanges.protocol import Endpoint, Exchange
    from pipeline.runtime.progress import Reporter
    from warehouse import Warehouse

SENSOR_TIMEOUT_S = 2.0  # a sensor tick asks one short question and retries on the next tick


class SettingsResource(dg.ConfigurableResource):
    """The home's configuration (`pipeline.config`), loaded when first asked for.

    `config_path`: the YAML file (default `$SIGNALBOX_CONFIG`, else signalbox.yaml); `home`:
    overrides the home (as `$SIGNALBOX_HOME` does). Other environment overrides apply as usual.
    """

    config_path: str | None = None
    home: str | None = None
    _loaded: Settings | None = PrivateAttr(default=None)

    def get(self) -> Settings:
        if self._loaded is None:
            from pipeline.config import ENV_HOME, load_settings

            env = dict(os.environ)
            if self.home:
                env[ENV_HOME] = self.home
            self._loaded = load_settings(self.config_path, env)
        return self._loaded


class ExchangeResource(dg.ConfigurableResource):
    """The home's exchange: the decided `Endpoint` and a venue's client at it (see the module
    docstring for where the decision is made).

    `endpoint`: the decision as JSON (default `$SIGNALBOX_ENDPOINT`, else the home's record).
    """

    settings: SettingsResource
    endpoint: str | None = None
    _source: Endpoint | None = PrivateAttr(default=None)

    def source(self) -> Endpoint:
        if self._source is None:
            from pipeline.runtime.processes import decided_endpoint

            self._source = decided_endpoint(self.settings.get(), self.endpoint)
        return self._source

    def client(self, venue: str = "bybit", *, quick: bool = False) -> Exchange:
        """The venue's client at the source; `quick`: a short timeout and no retries (a
        sensor tick, which simply asks again on the next tick). A `bybit: all` due for its
        daily refresh is resolved first (pipeline/exchanges/universe.py)."""
        from pipeline.exchanges import client, universe

        s = self.settings.get()
        if quick:
            section = getattr(s, venue)
            fast = section.model_copy(update={"timeout_s": SENSOR_TIMEOUT_S, "max_retries": 0})
            s = s.model_copy(update={venue: fast})
        universe.ensure(s, self.source())  # quick too: a failed refresh is tried next tick
        return client(venue, s, self.source())


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse of the home's source (one file per source); `path` overrides it."""

    exchange: ExchangeResource
    path: str | None = None

    def get(self) -> Warehouse:
        from pipeline.exchanges.sources import warehouse_for
        from warehouse import Warehouse

        if self.path:
            return Warehouse(Path(self.path))
        return warehouse_for(self.exchange.settings.get(), self.exchange.source())


class ProgressResource(dg.ConfigurableResource):
    """Where a run's long steps report progress (pipeline/runtime/progress.py): always the
    run's log; with `path` (set in the run config by the command that starts the run and
    draws the bars) also that JSON-lines file."""

    path: str | None = None

    def reporter(
        self,
        context: dg.AssetExecutionContext,
        unit: str,
        total: int,
        *,
        enabled: bool = True,
        every_s: float = 1.0,
    ) -> Reporter:
        from pipeline.runtime.progress import Reporter, append

        step = context.op_execution_context.node_handle.name
        path = Path(self.path) if self.path else None
        record = (lambda rec: append(path, rec)) if path else None
        return Reporter(
            context.log.info, unit, total, enabled=enabled, every_s=every_s, step=step,
            record=record,
        )  # fmt: skip


def resources(
    config_path: str | None = None, home: str | None = None, endpoint: str | None = None
) -> dict[str, dg.ConfigurableResource]:
    """The resources every asset, check and sensor uses, by parameter name."""
    settings = SettingsResource(config_path=config_path, home=home)
    exchange = ExchangeResource(settings=settings, endpoint=endpoint)
    return {
        "settings": settings,
        "exchange": exchange,
        "warehouse": WarehouseResource(exchange=exchange),
        "progress": ProgressResource(),
    }
