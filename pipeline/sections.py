"""The configuration's sections for venues and the replay exchange (`pipeline.config` holds
the rest and re-exports these): each venue's URLs, timeouts and filters, and what the replay
exchange serves.
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


class BybitConfig(_VenueConfig):
    _example = "https://api.bybit.com or ws://127.0.0.1:8765"
    rest_url: str = "https://api.bybit.com"
    ws_url: str = "wss://stream.bybit.com/v5/public/linear"
    category: Literal["linear", "spot", "inverse"] = "linear"
    min_turnover_24h: float | None = Field(None, ge=0)  # `exchanges: {bybit: all}` filter


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
