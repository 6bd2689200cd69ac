"""The configuration's sections (`pipeline.config` holds `Settings` and the loading, and
re-exports these): each venue's URLs, timeouts and filters, what the replay exchange serves,
and the UI, live, sidecar and backtest sections.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.markets import SYMBOL_RE, synthetic_universe


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _VenueConfig(_Section):
    """What every venue's section holds: its URLs (checked alike), timeouts and retries."""

    _example: ClassVar[str]  # the venue's own URLs, for the error message
    rest_url: str
    ws_url: str
    timeout_s: float = Field(10.0, gt=0, le=120)
    max_retries: int = Field(8, ge=0, le=50)
    probe_timeout_s: float = Field(3.0, gt=0, le=30)

    @field_validator("rest_url", "ws_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(https?|wss?)://[^\s/]+", v):
            raise ValueError(f"must be a URL such as {cls._example}")
        return v.rstrip("/")

    def client_options(self) -> dict[str, Any]:
        """The client's keyword settings from this section (`pipeline.exchanges.rest.Tuning`)."""
        return {
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "probe_timeout_s": self.probe_timeout_s,
        }


class SpotLeg(_Section):
    """A perpetual's spot pair where Bybit's instrument list cannot tell it (market context,
    pipeline/context/legs.py): the spot `symbol` and how many spot coins one perpetual unit is
    (`multiplier`: 1000 for 1000PEPEUSDT against PEPEUSDT)."""

    symbol: str
    multiplier: int = Field(1, ge=1)

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, v: str) -> str:
        if not SYMBOL_RE.match(v):
            raise ValueError("must be a Bybit spot symbol such as PEPEUSDT")
        return v


class BybitConfig(_VenueConfig):
    _example = "https://api.bybit.com or ws://127.0.0.1:8765"
    rest_url: str = "https://api.bybit.com"
    ws_url: str = "wss://stream.bybit.com/v5/public/linear"
    category: Literal["linear", "spot", "inverse"] = "linear"
    min_turnover_24h: float | None = Field(None, ge=0)  # `exchanges: {bybit: all}` filter
    spot_legs: dict[str, SpotLeg] = {}  # perpetual -> its spot pair, where not derived


class HyperliquidConfig(_VenueConfig):
    _example = "https://api.hyperliquid.xyz or ws://127.0.0.1:8765/ws"
    rest_url: str = "https://api.hyperliquid.xyz"
    ws_url: str = "wss://api.hyperliquid.xyz/ws"


# What the synthetic replay market lists; any other symbol is refused like on Bybit.
REPLAY_SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "DOGEUSDT", "ADAUSDT"]


class ReplayConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    seed: int = 7
    data: str | None = None  # resolved against the configuration file's folder; must exist
    # Listed by the synthetic market (or a data file's); a number N: a whole market of N.
    symbols: list[str] = REPLAY_SYMBOLS
    faults: float = Field(0.0, ge=0.0, le=1.0)
    rate_limit: int = Field(600, ge=0)  # requests per window per IP and endpoint (0: off)
    rate_limit_window_s: float = Field(1.0, gt=0, le=60)

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if not 1 <= v <= 2000:
                raise ValueError("a whole market is 1 to 2000 symbols")
            return synthetic_universe(v)
        if not isinstance(v, list) or not v or not all(SYMBOL_RE.match(str(s)) for s in v):
            raise ValueError("must list exchange symbols such as BTCUSDT, or be a count (200)")
        return v


class UiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    reports_port: int = Field(3001, ge=1, le=65535)  # `up` serves the reports directory here


class LiveConfig(_Section):
    history_days: int = Field(7, ge=0, le=3650)
    run_retention_days: float = Field(2.0, gt=0)
    catchup_chunk_minutes: int = Field(1440, ge=1, le=1440)
    freshness_minutes: int = Field(3, ge=1)
    gap_scan_days: int = Field(3, ge=1, le=60)


class SidecarConfig(_Section):
    socket: str = "sidecar.sock"
    tcp_host: str = "127.0.0.1"
    tcp_port: int | None = Field(None, ge=0, le=65535)
    token: str | None = None
    history: int = Field(10_000, ge=10)
    heartbeat_s: float = Field(5.0, gt=0)
    client_buffer: int = Field(1_000, ge=10)
    signal_ttl_minutes: int = Field(60, ge=1)


class BacktestConfig(_Section):
    window_days: int = Field(90, ge=1, le=3650)
    folds: int = Field(4, ge=1, le=24)
    report_dir: str = "reports"  # relative to home
    params: dict[str, Any] = {}

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        from pipeline.backtest.params import ParamError, params_from

        try:
            params_from(v)
        except ParamError as err:
            raise ValueError(str(err)) from None
        return v
