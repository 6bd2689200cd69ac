"""Which exchange we talk to, and which warehouse file its data lives in.

`auto` asks live Bybit for its clock with a short timeout and falls back to the replay exchange.
Every source gets its own DuckDB file, so replayed and live candles never mix.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlparse

from pipeline.config import BybitConfig, Settings
from warehouse import Warehouse

BYBIT_DEFAULT_REST = BybitConfig().rest_url
BYBIT_DEFAULT_WS = BybitConfig().ws_url


@dataclass(frozen=True)
class Endpoint:
    """A resolved exchange: kind, URLs, the warehouse id and a label for metadata."""

    kind: str  # "bybit" | "replay"
    rest_url: str
    ws_url: str
    warehouse_id: str
    label: str


def reachable(rest_url: str, timeout_s: float) -> bool:
    """True when `GET /v5/market/time` answers with retCode 0 within the timeout."""
    try:
        with urllib.request.urlopen(f"{rest_url}/v5/market/time", timeout=timeout_s) as resp:
            return json.loads(resp.read()).get("retCode") == 0
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def replay_endpoint(settings: Settings) -> Endpoint:
    """The replay exchange: at SIGNALBOX_BYBIT_URL when that points elsewhere, else host:port."""
    r = settings.replay
    if settings.bybit.rest_url != BYBIT_DEFAULT_REST:
        rest = settings.bybit.rest_url
        ws = settings.bybit.ws_url
        if ws == BYBIT_DEFAULT_WS:
            ws = rest.replace("http", "ws", 1) + "/v5/public/linear"
    else:
        rest = f"http://{r.host}:{r.port}"
        ws = f"ws://{r.host}:{r.port}/v5/public/linear"
    if r.data:
        ident, label = f"replay-{_slug(_stem(r.data))}", f"replay file={r.data}"
    else:
        ident = "replay" if r.seed == 7 else f"replay-seed{r.seed}"
        label = f"replay seed={r.seed}"
    return Endpoint("replay", rest, ws, ident, label)


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.split(".", 1)[0]


def bybit_endpoint(settings: Settings) -> Endpoint:
    host = urlparse(settings.bybit.rest_url).hostname or "bybit"
    ident = "bybit" if settings.bybit.rest_url == BYBIT_DEFAULT_REST else f"bybit-{_slug(host)}"
    return Endpoint("bybit", settings.bybit.rest_url, settings.bybit.ws_url, ident, f"bybit {host}")


def resolve(settings: Settings) -> Endpoint:
    """The endpoint for `settings.source`; `auto` probes live Bybit first."""
    if settings.source == "replay":
        return replay_endpoint(settings)
    if settings.source == "bybit":
        return bybit_endpoint(settings)
    if reachable(settings.bybit.rest_url, settings.bybit.probe_timeout_s):
        return bybit_endpoint(settings)
    return replay_endpoint(settings)


def remember(settings: Settings, endpoint: Endpoint) -> None:
    """Record the source `signalbox up` chose, so `sql` and friends need not probe again."""
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "source.json").write_text(json.dumps(endpoint.__dict__, indent=1))


def current(settings: Settings) -> Endpoint:
    """The source in use: forced by config/env, else what `signalbox up` last chose, else probe."""
    if settings.source == "auto":
        try:
            return Endpoint(**json.loads((settings.home / "source.json").read_text()))
        except (OSError, ValueError, TypeError):
            pass
    return resolve(settings)


def warehouse_for(settings: Settings, endpoint: Endpoint | None = None) -> Warehouse:
    """The warehouse file of the source in use."""
    ep = endpoint or current(settings)
    return Warehouse(settings.warehouse_dir / f"{ep.warehouse_id}.duckdb")
