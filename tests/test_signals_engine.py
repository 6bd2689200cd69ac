"""The signal engine's semantics on small hand-made bars (transitions, as-of joins, cooldown
windows, confluence, gates, regimes), data quality on synthetic data, the checks, and the
rows fitting the warehouse's `signals` table."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.candles.build import with_exchange
from pipeline.candles.timeframes import owned_where
from pipeline.strategy.checks import check_signals
from pipeline.strategy.personality import Personality, personality_from_dict
from pipeline.strategy.signal_table import SIGNAL_COLUMNS, signals_schema
from pipeline.strategy.signals import compute_signals, signal_summary, signals_for_partition
from tests.test_signals_history import FIRST, TIMEFRAMES, compared, market, shipped
from warehouse import Warehouse

UTC = dt.UTC
T0 = dt.datetime(2024, 3, 4, 9, 0, tzinfo=UTC)
COLUMNS = ["open", "high", "low", "close", "volume", "adx_14", "n_1m", "complete"]


def bars(
    tf_minutes: int, closes: list[float], start: dt.datetime = T0, **cols: list
) -> pl.DataFrame:
    n = len(closes)
    opens = [start + dt.timedelta(minutes=tf_minutes * i) for i in range(n)]
    return pl.DataFrame(
        {
            "symbol": ["BTCUSDT"] * n,
            "timeframe": [f"{tf_minutes}m" if tf_minutes < 60 else f"{tf_minutes // 60}h"] * n,
            "open_time": opens,
            "close_time": [t + dt.timedelta(minutes=tf_minutes) for t in opens],
            "open": closes,
            "high": closes,
            "low": closes,
            "close": [float(c) for c in closes],
            "volume": [1.0] * n,
            "complete": cols.pop("complete", [True] * n),
            **cols,
        },
        schema_overrides={"open_time": pl.Datetime("us", "UTC")},
    ).with_columns(pl.col("close_time").cast(pl.Datetime("us", "UTC")))


def persona(rules: list[dict[str, Any]], **top: Any) -> Personality:
    data = {
        "name": "t",
        "timeframes": ["5m", "1h"],
        "threshold": 1.0,
        "cooldown": "none",
        "rules": rules,
        **top,
    }
    return personality_from_dict(data, "t.yaml", timeframes=TIMEFRAMES, columns=COLUMNS)


def rule(name: str, when: str, direction: str = "long", weight: float = 1, **kw: Any) -> dict:
    return {
        "name": name,
        "when": when,
        "direction": direction,
        "weight": weight,
        "reason": kw.pop("reason", f"{name} at {{close:.0f}}"),
        **kw,
    }


def times(frame: pl.DataFrame) -> list[str]:
    return [t.strftime("%H:%M") for t in frame["close_time"].to_list()]


def flat_1h(n: int = 4, close: float = 50.0) -> pl.DataFrame:
    return bars(60, [close] * n, start=T0 - dt.timedelta(hours=1))


def test_signals_fire_on_transitions_stamped_at_close():
    closes = [50, 150, 150, 150, 50, 150, 150]
    p = persona([rule("above", "close > 100", reason="close {close:.0f} above 100")])
    out = compute_signals({"5m": bars(5, closes), "1h": flat_1h()}, p)
    assert times(out) == ["09:10", "09:30"]  # bars 1 and 5, stamped with their close
    assert out["open_time"].to_list()[0] == T0 + dt.timedelta(minutes=5)
    assert out["action"].to_list() == ["BUY", "BUY"]
    assert out["price"].to_list() == [150.0, 150.0]
    assert out["confidence"].to_list() == [1.0, 1.0]
    assert out["reasons"].to_list()[0] == ["close 150 above 100"]
    snap = json.loads(out["snapshot"][0])
    assert snap == {
        "net": 1.0,
        "threshold": 1.0,
        "regime": None,
        "rules": {"above": 1.0},
        "values": {"close": 150.0},
    }
    assert out["quality"].to_list() == ["ok", "ok"]
    assert out.columns == SIGNAL_COLUMNS and out.schema == pl.Schema(signals_schema())


def test_higher_timeframe_joins_as_of_close_not_open():
    """The 10:00-11:00 bar (close 200) is seen from the 5m bar closing at 11:00, never by the
    5m bars inside it (a join on open_time would signal at 10:05)."""
    five = bars(5, [50.0] * 36)  # 09:00 .. 12:00
    hour = bars(60, [50.0, 50.0, 200.0, 50.0], start=T0 - dt.timedelta(hours=1))  # 08:00 ..
    p = persona([rule("htf", "1h.close > 100", reason="1h close {1h.close:.0f}")])
    out = compute_signals({"5m": five, "1h": hour}, p)
    assert times(out) == ["11:00"]
    assert json.loads(out["snapshot"][0])["values"]["1h.close"] == 200.0
    assert out["reasons"][0].to_list() == ["1h close 200"]


def test_missing_higher_bar_is_unknown_and_degraded():
    five = bars(5, [50.0] * 12 + [150.0] * 12)  # 09:00 .. 11:00, up from 10:00
    hour = bars(60, [50.0, 50.0], start=T0 - dt.timedelta(hours=1))  # 08:00, 09:00; no 10:00
    rules = [rule("up", "close > 100"), rule("h", "1h.close < 100", weight=0.1)]
    p = persona(rules, threshold=0.9, emit_degraded=True)
    out = compute_signals({"5m": five, "1h": hour}, p)
    assert times(out) == ["10:05"]  # the 09:00 1h bar is the as-of bar: present
    assert out["quality"].to_list() == ["ok"]
    late = bars(5, [50.0] * 24 + [150.0] * 6)  # up from 11:00: as-of bar 10:00 is missing
    out = compute_signals({"5m": late, "1h": hour}, p)
    assert times(out) == ["11:05"]
    assert out["quality"][0] == "degraded: 1 1h bar(s) missing or incomplete"
    assert json.loads(out["snapshot"][0])["values"]["1h.close"] is None
    assert out["reasons"][0].to_list() == ["up at 150"]  # the unknown rule does not hold
    strict = dataclasses.replace(p, emit_degraded=False)
    assert compute_signals({"5m": late, "1h": hour}, strict).is_empty()


def test_cooldown_windows_are_a_fixed_grid():
    closes = [50, 150, 50, 50, 50, 150, 50, 150, 50, 50, 50, 50, 150]
    p = persona([rule("above", "close > 100")], cooldown="30m")
    frames = {"5m": bars(5, closes), "1h": flat_1h()}
    free = compute_signals(frames, dataclasses.replace(p, cooldown=None))
    assert times(free) == ["09:10", "09:30", "09:40", "10:05"]
    out = compute_signals(frames, p)
    # windows (09:00, 09:30] and (09:30, 10:00] by close_time (a bar's last minute): one each
    assert times(out) == ["09:10", "09:40", "10:05"]
    assert check_signals(out, p).passed
    assert not check_signals(free, p).passed


def test_confluence_net_of_the_other_side():
    closes = [50, 150, 150, 150]
    rules = [
        rule("a", "close > 100", weight=3),
        rule("b", "volume > 0", weight=1),
        rule("s", "close > 120", direction="short", weight=2),
    ]
    p = persona(rules, threshold=0.5)
    out = compute_signals({"5m": bars(5, closes), "1h": flat_1h()}, p)
    # long: (3 + 1 - 2) / 4 = 0.5 at the first up bar; short never (net negative)
    assert out["action"].to_list() == ["BUY"]
    assert out["confidence"].to_list() == [0.5]
    assert out["reasons"][0].to_list() == ["a at 150", "b at 150"]
    assert json.loads(out["snapshot"][0])["rules"] == {"a": 3.0, "b": 1.0}
    higher = persona(rules, threshold=0.51)
    assert compute_signals({"5m": bars(5, closes), "1h": flat_1h()}, higher).is_empty()


def test_gates_and_regimes():
    closes = [50, 150, 50, 150, 50, 150]
    adx = [10.0, 10.0, 10.0, 40.0, 40.0, 40.0]
    gate = {
        "name": "g",
        "when": "close < 1000",
        "direction": "long",
        "gate": True,
        "reason": "gate ok",
    }
    rules = [rule("a", "close > 100", regimes={"trend": 3}), rule("b", "close > 500"), gate]
    p = persona(rules, threshold=0.7, regimes={"trend": "adx_14 > 25", "flat": True})
    frames = {"5m": bars(5, closes, adx_14=adx), "1h": flat_1h()}
    out = compute_signals(frames, p)
    # flat: a alone = 1/2 < 0.7; trend: a x 3 = 3/4 >= 0.7
    assert times(out) == ["09:20", "09:30"]
    assert out["reasons"][0].to_list() == ["a at 150", "gate ok", "market regime: trend"]
    snap = json.loads(out["snapshot"][0])
    assert snap["regime"] == "trend" and snap["rules"] == {"a": 3.0} and snap["net"] == 0.75
    shut = persona(
        [*rules[:2], {**gate, "when": "close < 100"}],
        threshold=0.7,
        regimes={"trend": "adx_14 > 25", "flat": True},
    )
    assert compute_signals(frames, shut).is_empty()  # the gate never holds on an up bar


# -- data quality on the synthetic market ------------------------------------------------------


def test_missing_bars_mark_exactly_the_windows_that_saw_them():
    frames = market()
    one = frames["1m"]
    gone = one["open_time"].gather_every(997, offset=500)
    holed = {**frames, "1m": one.filter(~pl.col("open_time").is_in(gone.to_list()))}
    base = shipped("scalping")
    loose = dataclasses.replace(base, emit_degraded=True)
    out = compared(compute_signals(holed, loose))
    h = base.lookback + 1
    hit = set()
    for t in gone.to_list():
        for k in range(h + 1):  # signals whose bars [t - h, t] include the missing minute
            hit.add(t + dt.timedelta(minutes=1 + k))
    degraded = out.filter(pl.col("quality") != "ok")
    assert degraded.height >= 3
    assert set(degraded["close_time"].to_list()) == hit & set(out["close_time"].to_list())
    assert all(q == f"degraded: 1 of {h + 1} 1m bars missing" for q in degraded["quality"])
    strict = compared(compute_signals(holed, base))
    assert strict.height > 0 and (strict["quality"] == "ok").all()
    assert check_signals(strict, base).passed
    assert not check_signals(out, base).passed  # degraded rows a strict personality never emits


def test_incomplete_higher_bar_marks_degraded():
    frames = market()
    base = dataclasses.replace(shipped("swing"), emit_degraded=True)
    clean = compared(compute_signals(frames, base))
    assert clean.height > 2 and (clean["quality"] == "ok").all()
    # flag the 1h bar each of two signals read as incomplete (values unchanged)
    targets = clean["close_time"].to_list()[1:3]
    as_of = [t.replace(minute=0) - dt.timedelta(hours=1) for t in targets]
    hour = frames["1h"].with_columns(
        complete=pl.when(pl.col("open_time").is_in(as_of)).then(False).otherwise("complete")
    )
    out = compared(compute_signals({**frames, "1h": hour}, base))
    marked = out.filter(pl.col("quality") != "ok")
    assert set(targets) <= set(marked["close_time"].to_list())
    assert out.drop("quality").equals(clean.drop("quality"))  # same signals, only the verdict


# -- checks and the warehouse ------------------------------------------------------------------


def test_check_signals_finds_each_problem():
    p = shipped("scalping")
    good = compared(compute_signals(market(), p)).head(20)
    assert check_signals(good, p).passed
    bad = pl.concat(
        [
            good.head(1).with_columns(confidence=pl.lit(1.5)),
            good.slice(1, 1).with_columns(action=pl.lit("HOLD")),
            good.slice(2, 1),
            good.slice(2, 1),  # duplicate key
            good.slice(3, 1).with_columns(snapshot=pl.lit("not json")),
            good.slice(4, 1).with_columns(quality=pl.lit("fine")),
            good.slice(5, 1).with_columns(reasons=pl.lit([], dtype=pl.List(pl.String))),
            good.slice(6, 1).with_columns(price=pl.lit(-1.0)),
        ]
    )
    out = check_signals(bad, p)
    assert not out.passed
    assert set(out.metadata["problems"]) >= {
        "confidence outside [0, 1]",
        "action not BUY/SELL",
        "duplicate key",
        "snapshot not a JSON object",
        "quality not ok/degraded",
        "no reasons",
        "price not positive",
    }
    assert not check_signals(good.drop("snapshot")).passed


def test_rows_fit_the_signals_table(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    p, frames = shipped("vote"), market()
    day = FIRST + dt.timedelta(days=2)
    rows = signals_for_partition(frames, day, p)
    assert rows.height > 0
    for _ in range(2):  # idempotent: the partition's rows replaced, never duplicated
        wh.replace("signals", with_exchange(rows, "bybit"), *owned_where(day))
    back = wh.query(
        "SELECT *, snapshot->>'$.regime' AS regime FROM signals ORDER BY symbol, close_time"
    )
    assert back.height == rows.height
    assert back["reasons"].to_list() == rows["reasons"].to_list()
    assert back["regime"].to_list() == [json.loads(s)["regime"] for s in rows["snapshot"]]
    assert back["confidence"].to_list() == rows["confidence"].to_list()


def test_summary_for_the_ui():
    frames = market()
    day = FIRST + dt.timedelta(days=1)
    rows = pl.concat([signals_for_partition(frames, day, shipped(n)) for n in ("swing", "vote")])
    summary = signal_summary(rows)
    assert set(summary) <= {"swing", "vote"} and "vote" in summary
    vote = rows.filter(pl.col("personality") == "vote")
    assert summary["vote"]["BUY"] + summary["vote"]["SELL"] == vote.height
    assert summary["vote"]["BUY"] == vote.filter(pl.col("action") == "BUY").height
    assert summary["vote"]["degraded"] == 0
    assert summary["vote"]["mean_confidence"] == round(vote["confidence"].mean(), 4)
    assert signal_summary(rows.clear()) == {}


def test_empty_inputs_give_an_empty_table():
    p = persona([rule("above", "close > 100")])
    empty = bars(5, [50.0]).clear()
    out = compute_signals({"5m": empty, "1h": empty}, p)
    assert out.is_empty() and out.schema == pl.Schema(signals_schema())
    with pytest.raises(ValueError, match="frames lack timeframe 1h"):
        compute_signals({"5m": empty}, p)
