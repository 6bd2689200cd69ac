"""Candle sources for the replay exchange: the seeded synthetic market, or a file of real candles.

A source answers for whole UTC days of 1-minute rows (open_time_ms, o, h, l, c, v, t), knows
which symbols it serves and the decimals its numbers are printed with. The exchange clock and
revisions are applied on top by `market.Market`.

File sources (`--data FILE`): CSV or Parquet with an open-time column (`ts`, `open_time`,
`start`, `startTime` or `timestamp`: epoch ms, or a datetime), `open high low close volume`,
optional `turnover` and `symbol`. The served symbol comes from a single-valued `symbol` column,
else from the file name (e.g. `bybit_linear_BTCUSDT_1m_...parquet` -> BTCUSDT), else from a
single `symbols` entry given with the file; only that symbol is supported. A file that names
no symbol is refused (the exchange never invents one). A missing or null turnover is
estimated as volume x (o+h+l+c)/4 (Bybit always sends one).

Every source has an `ident` and a `label` (`pipeline.exchanges.sources.replay_identity`): the
exchange
reports them, so a client can check it talks to the market its warehouse holds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.replay import synthetic
from pipeline.replay.intervals import DAY_MS, MINUTE_MS
from pipeline.replay.wire import Decimals

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")
# Synthetic symbols are "listed" here: nothing older exists (keeps M/W requests bounded).
SYNTHETIC_LISTING_MS = 1_514_764_800_000  # 2018-01-01T00:00Z
_TIME_COLUMNS = ("ts", "open_time", "start", "starttime", "timestamp")
_NAME_SYMBOL = re.compile(r"(?<![A-Z0-9])([A-Z0-9]{2,26}(?:USDT|USDC|USD|PERP))(?![A-Z0-9])")


class Source(Protocol):
    name: str
    ident: str
    label: str

    def listed(self) -> list[str]: ...

    def supports(self, symbol: str) -> bool: ...

    def span(self, symbol: str) -> tuple[int, int | None]:
        """First open time served, and the last one (None: unbounded, i.e. up to the clock)."""
        ...

    def day(self, symbol: str, day: int) -> np.ndarray: ...

    def decimals(self, symbol: str) -> Decimals: ...


class SyntheticSource:
    """`pipeline.replay.synthetic` for the listed `symbols` (default: `config.REPLAY_SYMBOLS`)."""

    name = "synthetic"

    def __init__(
        self,
        seed: int = 7,
        symbols: list[str] | None = None,
        listing_ms: int = SYNTHETIC_LISTING_MS,
    ) -> None:
        from pipeline.config import REPLAY_SYMBOLS
        from pipeline.exchanges.sources import replay_identity

        self.seed = seed
        self.symbols = set(symbols or REPLAY_SYMBOLS)
        self.listing_ms = listing_ms
        self.ident, self.label = replay_identity(seed, None)

    def listed(self) -> list[str]:
        return sorted(self.symbols)

    def supports(self, symbol: str) -> bool:
        return symbol in self.symbols

    def span(self, symbol: str) -> tuple[int, int | None]:
        return self.listing_ms, None

    def day(self, symbol: str, day: int) -> np.ndarray:
        start = day * DAY_MS
        return synthetic.candles(symbol, start, start + DAY_MS, self.seed)

    def decimals(self, symbol: str) -> Decimals:
        return synthetic.price_decimals(symbol), 3, 4


def _decimals(x: np.ndarray, most: int = 10) -> int:
    """Fewest decimals that print every value exactly (values parsed from decimal text)."""
    x = x[np.isfinite(x)]
    for d in range(most + 1):
        scaled = x * 10.0**d
        if np.all(np.abs(scaled - np.rint(scaled)) <= 1e-6 + 1e-12 * np.abs(scaled)):
            return d
    return most


class FileSource:
    """Real 1-minute candles from a CSV or Parquet file."""

    name = "file"

    def __init__(self, path: str | Path, symbols: list[str] | None = None) -> None:
        from pipeline.exchanges.sources import replay_identity

        self.path = Path(path)
        times, values, named = _load(self.path)
        self.symbol = named or (symbols[0] if symbols and len(symbols) == 1 else None)
        if not self.symbol:
            raise ValueError(
                f"data file {self.path} names no symbol: add a `symbol` column, put the symbol "
                "in the file name (e.g. BTCUSDT_1m.parquet) or give exactly one with --symbols"
            )
        self.times = times
        self.values = values
        self.ident, self.label = replay_identity(0, str(self.path))
        self._dec: Decimals = (
            _decimals(values[:, :4].ravel()),
            _decimals(values[:, 4]),
            _decimals(values[:, 5]),
        )

    def listed(self) -> list[str]:
        return [self.symbol]

    def supports(self, symbol: str) -> bool:
        return symbol == self.symbol

    def span(self, symbol: str) -> tuple[int, int | None]:
        return int(self.times[0]), int(self.times[-1])

    def day(self, symbol: str, day: int) -> np.ndarray:
        i0, i1 = np.searchsorted(self.times, [day * DAY_MS, (day + 1) * DAY_MS])
        out = np.empty((i1 - i0, 7))
        out[:, 0] = self.times[i0:i1]
        out[:, 1:] = self.values[i0:i1]
        return out

    def decimals(self, symbol: str) -> Decimals:
        return self._dec


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    import polars as pl

    if not path.exists():
        raise ValueError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pl.read_parquet(path)
    elif suffix in (".csv", ".gz"):
        df = pl.read_csv(path, infer_schema_length=10_000)
    else:
        raise ValueError(f"data file {path}: use a .parquet or .csv file")
    df = df.rename({c: c.lower() for c in df.columns})
    tcol = next((c for c in _TIME_COLUMNS if c in df.columns), None)
    missing = [c for c in ("open", "high", "low", "close", "volume") if c not in df.columns]
    if tcol is None or missing:
        need = "an open-time column (ts, open_time or start)" if tcol is None else ""
        raise ValueError(
            f"data file {path} lacks {', '.join([need, *missing]).strip(', ')}; it has {df.columns}"
        )
    t = df[tcol]
    if t.dtype.is_temporal():
        t = t.cast(pl.Datetime("ms", "UTC")).cast(pl.Int64)
    times = t.cast(pl.Int64).to_numpy()
    cols = ["open", "high", "low", "close", "volume"]
    values = df.select(pl.col(cols).cast(pl.Float64)).to_numpy()
    if "turnover" in df.columns:
        turnover = df["turnover"].cast(pl.Float64).to_numpy()
    else:
        turnover = np.full(len(df), np.nan)
    estimate = np.round(values[:, 4] * values[:, :4].mean(axis=1), 4)
    turnover = np.where(np.isnan(turnover), estimate, turnover)
    values = np.column_stack([values, turnover])
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order]
    if len(times) == 0:
        raise ValueError(f"data file {path} has no rows")
    if np.any(times % MINUTE_MS):
        bad = int(times[np.flatnonzero(times % MINUTE_MS)[0]])
        raise ValueError(f"data file {path}: open time {bad} is not on the minute grid")
    dup = np.flatnonzero(np.diff(times) == 0)
    if len(dup):
        raise ValueError(f"data file {path}: open time {int(times[dup[0]])} appears twice")
    return times.astype(np.int64), values, _symbol_of(df, path)


def _symbol_of(df, path: Path) -> str | None:  # df: pl.DataFrame
    if "symbol" in df.columns:
        names = df["symbol"].unique().to_list()
        if len(names) == 1 and SYMBOL_RE.match(str(names[0])):
            return str(names[0])
    m = _NAME_SYMBOL.search(path.name.upper())
    return m.group(1) if m else None


def make_source(seed: int, data: str | Path | None, symbols: list[str] | None = None) -> Source:
    """The file source for `data` (`symbols`: its one symbol if the file names none), else
    the synthetic market for `seed` listing `symbols` (one number N: a whole market of N USDT
    perpetuals, `pipeline.markets.synthetic_universe`)."""
    if data:
        return FileSource(data, symbols)
    if symbols and len(symbols) == 1 and symbols[0].isdigit():
        from pipeline.markets import synthetic_universe

        symbols = synthetic_universe(int(symbols[0]))
    return SyntheticSource(seed, symbols)
