"""The inputs of a backtest as arrays: 1m candles, signals, the window, ATR per timeframe.

Prepared once from polars frames, then shared (not copied) by every run over them: single
backtests, parameter sweeps and walk-forward folds differ only in parameters and window.

Window: fills happen on the 1m bars with open_time in [start, end); a signal takes part if its
close_time is in [start, end), it fills at the first bar with open_time >= close_time, and it is
dropped if that bar opens more than `signal_expiry_minutes` after the close_time (a gap in the
data). Several signals due at the same bar (e.g. from two timeframes): the latest close_time
wins, then the highest confidence.

ATR-based distances use ATR(atr_period, Wilder) of the signal's own timeframe, built from the
1m candles on the epoch-anchored grid, taken from the last bar closed by the signal's close_time.
Pass candles from before `start` to warm it up; a signal without an ATR yet is skipped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.backtest.params import BacktestParams, ParamError
from pipeline.candles.timeframes import MINUTE_US, from_us, to_us

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

_CANDLE_COLS = ("open_time", "open", "high", "low", "close")
_SIGNAL_COLS = ("close_time", "action")


@dataclass
class Market:
    """1m candles (all of them, for ATR warm-up) and signals as arrays, plus the window."""

    symbol: str
    personality: str
    times: np.ndarray  # open_time, epoch microseconds, ascending, unique
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    complete: np.ndarray  # bool per candle
    sig_close: np.ndarray  # signal close_time, epoch microseconds, ascending
    sig_dir: np.ndarray  # +1 BUY, -1 SELL
    sig_conf: np.ndarray
    sig_degraded: np.ndarray  # bool
    sig_tf: np.ndarray  # timeframe name per signal (object)
    start_us: int
    end_us: int
    i0: int  # window = candles[i0:i1]
    i1: int
    _atr: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def timeframe(self) -> str:
        """The signals' timeframe(s), as stored in backtest_runs.timeframe."""
        tfs = sorted({str(t) for t in self.sig_tf})
        return ",".join(tfs) if tfs else "-"

    @property
    def start(self) -> dt.datetime:
        return from_us(self.start_us)

    @property
    def end(self) -> dt.datetime:
        return from_us(self.end_us)

    def window(
        self, start: dt.datetime | dt.date | None, end: dt.datetime | dt.date | None
    ) -> Market:
        """The same market over another window (arrays shared, not copied)."""
        import numpy as np

        s = None if start is None else to_us(start)
        e = None if end is None else to_us(end)
        if not len(self.times):
            raise ParamError("empty window: the candles frame has no rows")
        s = int(self.times[0]) if s is None else s
        e = int(self.times[-1]) + MINUTE_US if e is None else e
        if s >= e:
            raise ParamError(
                f"empty window: start {from_us(s).isoformat()} is not before end "
                f"{from_us(e).isoformat()}; give start < end (end is exclusive)"
            )
        i0 = int(np.searchsorted(self.times, s, "left"))
        i1 = int(np.searchsorted(self.times, e, "left"))
        if i1 <= i0:
            raise ParamError(
                f"empty window: no 1m candles with open_time in [{from_us(s).isoformat()}, "
                f"{from_us(e).isoformat()}); the candles cover "
                f"{from_us(int(self.times[0])).isoformat()} to "
                f"{from_us(int(self.times[-1]) + MINUTE_US).isoformat()}"
            )
        return dataclasses.replace(self, start_us=s, end_us=e, i0=i0, i1=i1, _atr=self._atr)

    # -- signals for one parameter set ---------------------------------------------------
    def signal_bars(self, p: BacktestParams) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Per-bar signal arrays for the kernel, and counts of what was dropped and why."""
        import numpy as np

        n = self.i1 - self.i0
        times = self.times[self.i0 : self.i1]
        lo = int(np.searchsorted(self.sig_close, self.start_us, "left"))
        hi = int(np.searchsorted(self.sig_close, self.end_us, "left"))
        ref = np.arange(lo, hi)
        info = {
            "signals": hi - lo,
            "degraded_signals": int(self.sig_degraded[lo:hi].sum()),
            "below_min_confidence": 0,
            "skipped_degraded": 0,
            "expired": 0,
            "superseded": 0,
        }
        keep = self.sig_conf[ref] >= p.min_confidence
        info["below_min_confidence"] = int((~keep).sum())
        if p.skip_degraded:
            deg = self.sig_degraded[ref] & keep
            info["skipped_degraded"] = int(deg.sum())
            keep &= ~self.sig_degraded[ref]
        ref = ref[keep]
        bar = np.searchsorted(times, self.sig_close[ref], "left")
        inside = bar < n
        ref, bar = ref[inside], bar[inside]
        late = times[bar] - self.sig_close[ref] > p.signal_expiry_minutes * MINUTE_US
        info["expired"] = int(late.sum())
        ref, bar = ref[~late], bar[~late]
        # several signals due at one bar: latest close_time, then highest confidence, wins
        order = np.lexsort((self.sig_conf[ref], self.sig_close[ref]))
        ref, bar = ref[order], bar[order]
        last = np.r_[bar[1:] != bar[:-1], True] if len(bar) else np.zeros(0, dtype=bool)
        info["superseded"] = int((~last).sum())
        ref, bar = ref[last], bar[last]

        out = {
            "dir": np.zeros(n, dtype=np.int8),
            "conf": np.zeros(n),
            "atr": np.full(n, np.nan),
            "ref": np.full(n, -1, dtype=np.int64),
        }
        out["dir"][bar] = self.sig_dir[ref]
        out["conf"][bar] = self.sig_conf[ref]
        out["ref"][bar] = ref
        if p.uses_atr:
            out["atr"][bar] = self.signal_atr(p.atr_period)[ref]
        return out, info

    def signal_atr(self, period: int) -> np.ndarray:
        """ATR(period) of each signal's timeframe as of its close_time (NaN while warming up)."""
        import numpy as np

        atr = np.full(len(self.sig_close), np.nan)
        for tf in sorted({str(t) for t in self.sig_tf}):
            key = (tf, period)
            if key not in self._atr:
                self._atr[key] = _timeframe_atr(self, tf, period)
            bar_close, bar_atr = self._atr[key]
            sel = np.flatnonzero(self.sig_tf == tf)
            k = np.searchsorted(bar_close, self.sig_close[sel], "right") - 1
            ok = k >= 0
            atr[sel[ok]] = bar_atr[k[ok]]
        return atr


def _timeframe_atr(m: Market, tf: str, period: int) -> tuple[np.ndarray, np.ndarray]:
    """(close_time_us, ATR) of `tf` bars built from the 1m candles (epoch/Monday/month grid)."""
    import numpy as np
    import talib

    from pipeline.candles.timeframes import parse_timeframe

    spec = parse_timeframe(tf)
    ms = m.times // 1000
    if spec.kind == "month":
        months = ms.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
        bucket = months // spec.months
        ends = ((bucket + 1) * spec.months).astype("datetime64[M]")
        close_all = ends.astype("datetime64[us]").astype(np.int64)
    else:
        bucket = (ms - spec.anchor_ms) // spec.ms
        close_all = ((bucket + 1) * spec.ms + spec.anchor_ms) * 1000
    if not len(bucket):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends_i = np.r_[starts[1:] - 1, len(bucket) - 1]
    high = np.maximum.reduceat(m.high, starts)
    low = np.minimum.reduceat(m.low, starts)
    close = m.close[ends_i]
    atr = (
        talib.ATR(high, low, close, timeperiod=period)
        if len(close) > period
        else np.full(len(close), np.nan)
    )
    return close_all[ends_i], atr


def prepare(
    candles: pl.DataFrame,
    signals: pl.DataFrame,
    *,
    start: dt.datetime | dt.date | None = None,
    end: dt.datetime | dt.date | None = None,
    personality: str | None = None,
    symbol: str | None = None,
) -> Market:
    """Validate and convert the frames once; the window defaults to all the candles."""
    import numpy as np
    import polars as pl

    missing = [c for c in _CANDLE_COLS if c not in candles.columns]
    if missing:
        raise ParamError(f"candles frame lacks column(s) {missing}; needs {list(_CANDLE_COLS)}")
    missing = [c for c in _SIGNAL_COLS if c not in signals.columns]
    if missing:
        raise ParamError(f"signals frame lacks column(s) {missing}; needs {list(_SIGNAL_COLS)}")
    cols = [pl.col("open_time").dt.epoch("us").alias("t"), *[pl.col(c) for c in _CANDLE_COLS[1:]]]
    cols.append(
        pl.col("complete").fill_null(False) if "complete" in candles.columns else pl.lit(True)
    )
    cf = candles.select(*cols[:-1], cols[-1].alias("complete")).unique("t", keep="last").sort("t")
    bad = cf.filter(
        ~pl.all_horizontal(pl.col("open", "high", "low", "close").is_finite())
        | (pl.col("low") <= 0)
    )
    if bad.height:
        raise ParamError(
            f"candles frame has {bad.height} row(s) with missing or non-positive prices"
        )

    actions = signals["action"].unique().to_list()
    wrong = [a for a in actions if a not in ("BUY", "SELL")]
    if wrong:
        raise ParamError(f"signals frame has action(s) {wrong}; allowed: BUY, SELL")
    sf = signals.select(
        pl.col("close_time").dt.epoch("us").alias("t"),
        pl.when(pl.col("action") == "BUY").then(1).otherwise(-1).cast(pl.Int8).alias("dir"),
        (pl.col("confidence") if "confidence" in signals.columns else pl.lit(1.0))
        .cast(pl.Float64)
        .fill_null(0.0)
        .alias("conf"),
        (
            (pl.col("quality").fill_null("degraded") != "ok")
            if "quality" in signals.columns
            else pl.lit(False)
        ).alias("degraded"),
        (pl.col("timeframe") if "timeframe" in signals.columns else pl.lit("1m"))
        .cast(pl.String)
        .alias("tf"),
    ).sort("t", maintain_order=True)
    personality = personality or _single(signals, "personality") or "unknown"
    symbol = symbol or _single(candles, "symbol") or _single(signals, "symbol") or "unknown"
    m = Market(
        symbol=symbol,
        personality=personality,
        times=cf["t"].to_numpy().astype(np.int64),
        open=cf["open"].to_numpy().astype(np.float64),
        high=cf["high"].to_numpy().astype(np.float64),
        low=cf["low"].to_numpy().astype(np.float64),
        close=cf["close"].to_numpy().astype(np.float64),
        complete=cf["complete"].to_numpy().astype(bool),
        sig_close=sf["t"].to_numpy().astype(np.int64),
        sig_dir=sf["dir"].to_numpy().astype(np.int8),
        sig_conf=sf["conf"].to_numpy().astype(np.float64),
        sig_degraded=sf["degraded"].to_numpy().astype(bool),
        sig_tf=np.asarray(sf["tf"].to_list(), dtype=object),
        start_us=0,
        end_us=0,
        i0=0,
        i1=0,
    )
    return m.window(start, end)


def _single(frame: pl.DataFrame, col: str) -> str | None:
    if col not in frame.columns or frame.is_empty():
        return None
    vals = frame[col].unique().to_list()
    if len(vals) > 1:
        raise ParamError(f"the frame mixes several {col}s {sorted(vals)[:5]}; pass one {col}")
    return str(vals[0])
