"""Market context in the rule language (pipeline/strategy/context.py): each value joined as of
the bar's close and NULL where unknown, rules that never turn NULL into true or false silently,
the shipped `vote` and `swing` using it, and the warehouse path (a partition, runs of days, the
whole history, a live tail) giving the same rows as one pass."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.candles.build import build_candles, write_candles
from pipeline.candles.timeframes import to_ms
from pipeline.exchanges.ingest import VENUE_WHERE
from pipeline.indicators import load_spec
from pipeline.indicators.build import build_indicators, write_indicators
from pipeline.replay import synthetic
from pipeline.strategy.checks import check_signals_lookahead
from pipeline.strategy.context import (
    COLUMNS,
    Context,
    context_needs,
    join_context,
    no_context,
    reads_context,
)
from pipeline.strategy.personality import PersonalityError, load_personality, personality_from_dict
from pipeline.strategy.signals import compute_signals
from tests import context_rows
from tests.conftest import SEED
from tests.test_signals_history import (
    CONTEXT,
    TIMEFRAMES,
    compared,
    context_personality,
    market,
    market_context,
    shipped,
)
from warehouse import Replacement, Warehouse

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
H = dt.timedelta(hours=1)
M = dt.timedelta(minutes=1)
TS = pl.Datetime("us", "UTC")


def hourly(n: int, symbols=("A", "B")) -> dict[str, pl.DataFrame]:
    """1h bars from T0 for each symbol: close 100 + i."""
    rows = [
        {"symbol": s, "open_time": T0 + i * H, "close_time": T0 + (i + 1) * H, "close": 100.0 + i}
        for s in symbols
        for i in range(n)
    ]
    return {"1h": pl.DataFrame(rows).with_columns(pl.col("open_time", "close_time").cast(TS))}


def frame(rows: list[dict]) -> pl.DataFrame:
    f = pl.DataFrame(rows)
    return f.with_columns([pl.col(c).cast(TS) for c in f.columns if c.endswith(("_at", "time"))])


def value(out: dict[str, pl.DataFrame], col: str, symbol: str, close: dt.datetime):
    f = out["1h"].filter((pl.col("symbol") == symbol) & (pl.col("close_time") == close))
    return f[col].item()


def test_each_value_is_what_was_known_at_the_close_and_null_outside() -> None:
    funding = frame(
        [
            {"symbol": "A", "known_at": T0 + 8 * H, "funding_rate": 0.0001},
            {"symbol": "A", "known_at": T0 + 16 * H, "funding_rate": 0.0006},
            # 24:00 missing: from 24:00 on, the newest is more than 8 hours old
            {"symbol": "A", "known_at": T0 + 32 * H, "funding_rate": -0.0002},
        ]
    )
    oi = frame(
        [
            {"symbol": "A", "known_at": T0 + k * 5 * M, "open_interest": 1000.0 + k}
            for k in range(1, 12 * 40)
            if k not in (12 * 10, 12 * 20, 12 * 20 - 1)  # 10:00 missing; 19:55 and 20:00 too
        ]
    )
    spot = frame(
        [
            {"symbol": "A", "close_time": T0 + i * H, "close": 100.0 + i - 2 - 0.01}
            for i in range(1, 40)
            if i != 5
        ]
    )
    flow = frame(
        [
            {"symbol": "A", "timeframe": "1h", "open_time": T0 + i * H,
             "close_time": T0 + (i + 1) * H, "buy_ratio": None if i == 3 else 0.5 + i / 100,
             "delta": 1.0, "cvd_24h": None if i < 23 else 24.0, "cvd_day": float(i % 24 + 1)}
            for i in range(40)
            if i != 7
        ]
    )  # fmt: skip
    need = {"1h": set(COLUMNS)}
    out = join_context(hourly(40), Context(flow, funding, oi, spot), need)
    assert out["1h"].columns[:4] == ["symbol", "open_time", "close_time", "close"]
    assert out["1h"]["symbol"].to_list() == ["A"] * 40 + ["B"] * 40  # rows in their order
    a = {c: (lambda t, c=c: value(out, c, "A", T0 + t * H)) for c in COLUMNS}
    # funding: none known before 08:00; known at its own instant; up to 8 hours old
    assert a["funding_rate"](7) is None and a["funding_rate"](8) == 0.0001
    assert a["funding_rate"](16) == 0.0006 and a["funding_rate"](24) == 0.0006
    assert a["funding_rate"](25) is None and a["funding_rate"](32) == -0.0002
    # open interest: now over an hour ago; one step late is still the newest reading
    assert a["oi_change_1h"](5) == pytest.approx((1000 + 60) / (1000 + 48) - 1, rel=1e-12)
    assert a["oi_change_1h"](10) == pytest.approx((1000 + 119) / (1000 + 108) - 1, rel=1e-12)
    assert a["oi_change_1h"](1) is None  # nothing an hour before the first reading
    assert a["oi_change_1h"](20) is None  # the newest reading is 10 minutes old
    assert a["oi_change_1h"](21) is None  # and so is the one an hour before
    # basis: the spot candle closing with the bar; none -> NULL
    assert a["basis_bps"](6) == pytest.approx((105 - 103.99) / 103.99 * 1e4, rel=1e-12)
    assert a["basis_bps"](5) is None and a["basis_bps"](40) is None
    # order flow: the bar's own row; uncovered or missing -> NULL
    assert a["buy_ratio"](1) == 0.5 and a["buy_ratio"](4) is None and a["buy_ratio"](8) is None
    assert a["cvd"](23) is None and a["cvd"](24) == 24.0 and a["cvd_day"](24) == 24.0
    # another symbol has none of them: NULL, never A's
    b = out["1h"].filter(pl.col("symbol") == "B").select(COLUMNS)
    assert b.null_count().row(0) == (40,) * len(COLUMNS)


def test_only_what_the_rules_read_is_joined_and_a_missing_table_is_named() -> None:
    p = context_personality()
    assert context_needs([p]) == {
        "5m": {"basis_bps", "buy_ratio", "oi_change_1h", "cvd", "funding_rate"},
        "1h": {"buy_ratio"},
    }
    assert reads_context(p)[0] == "1h.buy_ratio"
    assert context_needs([shipped(n) for n in ("scalping", "swing", "ma_trend")]) == {}
    with pytest.raises(ValueError, match="funding_rates were not read"):
        join_context(hourly(2), Context(), {"1h": {"funding_rate"}})
    bare = {tf: f.drop(COLUMNS) for tf, f in market().items()}
    with pytest.raises(ValueError, match=r"lacks column\(s\) .*join_context"):
        compute_signals(bare, p)


def test_the_rule_language_reads_the_new_names_and_says_what_is_wrong() -> None:
    def load(rules: list[dict]) -> None:
        personality_from_dict(
            {"name": "x", "timeframes": ["15m"], "threshold": 0.5, "cooldown": "1h",
             "rules": rules}, "x.yaml",
        )  # fmt: skip

    weighted = {"name": "r", "direction": "long", "weight": 1, "reason": "because"}
    with pytest.raises(PersonalityError, match=r"unknown column 'funding'.*funding_rate.*context"):
        load([{**weighted, "when": "funding < 0.001"}])
    with pytest.raises(PersonalityError, match=r"when_unknown: .*unknown column 'buy_rate'"):
        load([{**weighted, "when": "buy_ratio > 0.5", "when_unknown": "at {buy_rate}"}])
    with pytest.raises(PersonalityError, match="`enabled` must be true or false"):
        load([{**weighted, "when": "buy_ratio > 0.5", "enabled": "no"}])
    with pytest.raises(PersonalityError, match=r"rule 'off'.*unknown column 'buy_rate'"):
        load([weighted | {"when": "close > 0"},  # a disabled rule is checked all the same
              weighted | {"name": "off", "when": "buy_rate > 0.5", "enabled": False}])  # fmt: skip


def test_null_context_never_holds_and_a_filter_that_cannot_apply_says_so() -> None:
    """Where funding is unknown, a plain gate blocks its side; a gate with `when_unknown`
    lets it through and the signal's reasons say the filter was not applied."""
    frames, ctx = market(), market_context()
    p = context_personality()
    rows = compared(compute_signals(frames, p))
    buys = rows.filter(pl.col("action") == "BUY")
    funding = [json.loads(s)["values"]["funding_rate"] for s in buys["snapshot"]]
    unknown = [f is None for f in funding]
    assert any(unknown) and not all(unknown)  # both kinds are in the compared days
    for f, reasons in zip(funding, buys["reasons"].to_list(), strict=True):
        assert f is None or f < 0.0005  # never a long into expensive funding
        said = "funding filter not applied: no funding rate known" in reasons
        assert said == (f is None)
    strict = personality_from_dict(
        {**CONTEXT, "rules": [{k: v for k, v in r.items() if k != "when_unknown"}
                              for r in CONTEXT["rules"]]}, "strict", timeframes=TIMEFRAMES,
    )  # fmt: skip
    strict_buys = compared(compute_signals(frames, strict)).filter(pl.col("action") == "BUY")
    assert strict_buys.height > 0
    assert all(json.loads(s)["values"]["funding_rate"] is not None for s in strict_buys["snapshot"])
    assert ctx.funding is not None and ctx.funding.height > 0
    # the text may quote values, as a reason does
    rules = [{**r, "when_unknown": "no funding known at {close:,.1f}"} if "when_unknown" in r
             else r for r in CONTEXT["rules"]]  # fmt: skip
    quoting = personality_from_dict({**CONTEXT, "rules": rules}, "q", timeframes=TIMEFRAMES)
    said = [x for r in compute_signals(frames, quoting)["reasons"] for x in r]
    assert any(x.startswith("no funding known at ") and x[-1].isdigit() for x in said)


def _without_context(p):
    keep = tuple(r for r in p.rules if r.name not in ("cvd_trend", "funding_long", "funding_short"))
    return dataclasses.replace(p, rules=keep)


def test_vote_without_any_context_decides_as_its_ohlcv_vote_and_says_funding_was_unknown() -> None:
    """The CVD vote abstains where there is no order flow (its weight leaves the maximum) and
    the funding filter is not applied where no rate is known: on a market without context the
    shipped vote fires exactly the OHLCV vote's signals, each saying both. With context the
    CVD votes and the filter blocks."""
    vote = shipped("vote")
    assert {"cvd_trend", "funding_long", "funding_short"} <= {r.name for r in vote.rules}
    none = join_context(market(), no_context(), context_needs([vote]))
    new = compared(compute_signals(none, vote))
    old = compared(compute_signals(none, _without_context(vote)))
    assert new.height >= 5
    assert new.select("close_time", "action", "confidence").equals(
        old.select("close_time", "action", "confidence")
    )
    notes = [
        "order-flow vote abstained: no order flow for these bars",
        "funding filter not applied: no funding rate known",
    ]
    for a, b in zip(new["reasons"].to_list(), old["reasons"].to_list(), strict=True):
        assert a == [*b[:-1], *notes, b[-1]]  # before the regime line
    with_ctx = compared(compute_signals(market(), vote))
    votes = [json.loads(s)["rules"].get("cvd_trend") for s in with_ctx["snapshot"]]
    assert any(v is not None for v in votes)  # the order flow voted on some signals
    assert not with_ctx.select("close_time", "action").equals(new.select("close_time", "action"))


def test_swing_buy_ratio_condition_is_off_unless_enabled() -> None:
    """Shipped off (swing stays a fast-lane personality); enabled, longs need takers buying."""
    swing = shipped("swing")
    assert reads_context(swing) == []
    path = Path(swing.source)
    import yaml

    data = yaml.safe_load(path.read_text())
    for r in data["rules"]:
        r.pop("enabled", None)
    on = personality_from_dict(data, "swing_on.yaml", timeframes=TIMEFRAMES)
    assert reads_context(on) == ["buy_ratio"]
    base = compared(compute_signals(market(), swing))
    got = compared(compute_signals(market(), on))
    assert base.height > 0
    for r in got.iter_rows(named=True):
        ratio = json.loads(r["snapshot"])["values"]["buy_ratio"]
        if ratio is None:
            assert "buy-ratio filter not applied: no order flow for this bar" in r["reasons"]
        else:
            assert ratio >= 0.55 if r["action"] == "BUY" else ratio <= 0.45
    assert got.height < base.height  # it filtered some out


def test_the_lookahead_check_catches_a_context_value_from_the_future() -> None:
    """Frames whose funding rate was joined from the next funding (8 hours later) give other
    signals than the live path, which joins from the rows known at each bar's close."""
    p = context_personality()
    frames = dict(market())
    frames["5m"] = frames["5m"].with_columns(pl.col("funding_rate").shift(-96))
    outcome = check_signals_lookahead(frames, p, sample=80, seed=2, context=market_context())
    assert not outcome.passed and outcome.metadata["failures"] >= 3
    honest = check_signals_lookahead(market(), p, sample=80, seed=2, context=market_context())
    assert honest.passed, honest.metadata


# -- the warehouse path ----------------------------------------------------------------------

START = dt.datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 6
DAY = dt.timedelta(days=1)
WH_TFS = ["1m", "5m", "15m", "1h"]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    """Six days of synthetic BTCUSDT with candles, indicators and every context table, each
    written through the warehouse's replacement (as the assets write them)."""
    wh = Warehouse(tmp_path_factory.mktemp("ctx") / "w.duckdb", replica_sync=False)
    lo, hi = START - DAY, START + DAYS * DAY
    k = synthetic.frame("BTCUSDT", to_ms(lo), to_ms(hi), SEED)
    now = pl.lit(dt.datetime(2024, 6, 1, tzinfo=UTC), TS)
    rows = k.with_columns(exchange=pl.lit("bybit"), source=pl.lit("test"), ingested_at=now)
    where = VENUE_WHERE.format(marks="?")
    gaps = rows.head(0).select("exchange", "symbol", "open_time", checked_at="ingested_at")
    wh.replace_many(
        [
            Replacement("klines_1m", rows, where, ("bybit", "BTCUSDT", lo, hi)),
            Replacement("kline_gaps", gaps, where, ("bybit", "BTCUSDT", lo, hi)),
        ]
    )
    write_candles(wh, [build_candles(wh, "bybit", lo, hi, WH_TFS)], lo, hi)
    days = [(lo + i * DAY).date() for i in range(DAYS + 1)]
    ind, _ = build_indicators(wh, "bybit", days, hi, WH_TFS, load_spec())
    write_indicators(wh, {"bybit": ind}, lo, hi)
    ctx = context_rows.context(k, WH_TFS, START.date() + DAY, (hi - DAY).date(), SEED)
    venue = pl.lit("bybit").alias("exchange")
    assert ctx.flow is not None and ctx.funding is not None and ctx.oi is not None
    assert ctx.spot is not None
    everything = ("exchange = ?", ("bybit",))
    wh.replace_many(
        [
            Replacement("order_flow_bars", ctx.flow.with_columns(venue), *everything),
            Replacement(
                "funding_rates", ctx.funding.with_columns(venue, ingested_at=now), *everything
            ),
            Replacement(
                "open_interest_5m", ctx.oi.with_columns(venue, ingested_at=now), *everything
            ),
            Replacement(
                "spot_klines_1m",
                ctx.spot.with_columns(venue, source=pl.lit("test"), ingested_at=now),
                *everything,
            ),
        ]
    )
    return wh


def _personalities():
    p = personality_from_dict({**CONTEXT, "timeframes": ["5m", "1h"]}, "context", timeframes=WH_TFS)
    return [p, load_personality("vote", WH_TFS), load_personality("scalping", WH_TFS)]


def test_warehouse_partitions_runs_and_whole_history_agree(warehouse, monkeypatch) -> None:
    """Signals built from the warehouse (each run reading its own windows and the context
    rows they reach) equal one pass over the whole history joined with every context row."""
    from pipeline.strategy import build as sig_build
    from pipeline.strategy.build import build_signals, read_inputs

    ps = _personalities()
    days = [(START + i * DAY).date() for i in range(DAYS)]
    span = build_signals(warehouse, "bybit", days[0], days[-1], ps)
    monkeypatch.setattr(sig_build, "SIGNAL_ROWS", 1)  # a run a day
    runs = build_signals(warehouse, "bybit", days[0], days[-1], ps)
    everything = {tf: (START - DAY, START + DAYS * DAY) for tf in WH_TFS}
    frames, ctx = read_inputs(warehouse, "bybit", everything, ps)
    assert ctx is not None and ctx.funding is not None and ctx.funding.height > 0
    lo, hi = START, START + DAYS * DAY
    for p in ps:
        whole = compute_signals(frames, p).filter(pl.col("close_time").is_between(lo, hi, "right"))
        mine = span.by_personality[p.name].drop("exchange")
        assert whole.height >= 3, p.name
        assert mine.equals(whole), p.name
        assert runs.by_personality[p.name].equals(span.by_personality[p.name]), p.name
        check = check_signals_lookahead(
            runs.frames, p, sample=40, day=days[-1], context=runs.context
        )
        assert check.passed, (p.name, check.metadata)


def test_a_signals_run_reads_context_only_for_personalities_that_name_it(warehouse) -> None:
    from pipeline.strategy.build import build_signals

    day = (START + 2 * DAY).date()
    plain = build_signals(warehouse, "bybit", day, day, [load_personality("scalping", WH_TFS)])
    assert plain.context is None and "funding_rate" not in plain.frames["1m"].columns
    vote = build_signals(warehouse, "bybit", day, day, [load_personality("vote", WH_TFS)])
    assert vote.context is not None
    assert vote.context.oi is None and vote.context.spot is None  # vote reads neither
    assert vote.context.funding is not None and vote.context.flow is not None


def test_a_live_tail_gives_the_partitions_rows(warehouse) -> None:
    """The live path's tail (the bars of the last hours, read from their own windows) equals
    the partition's rows for those bars."""
    from pipeline.strategy.build import build_signals

    ps = _personalities()[:2]
    day = (START + 4 * DAY).date()
    full = build_signals(warehouse, "bybit", day, day, ps)
    lo = dt.datetime.combine(day, dt.time(), UTC) + 12 * H
    hi = lo + 12 * H
    ranges = {tf: (lo, hi) for tf in WH_TFS}
    tail = build_signals(warehouse, "bybit", day, day, ps, ranges=ranges)
    for p in ps:
        t = pl.col("close_time")
        want = full.by_personality[p.name].filter((t > lo) & (t <= hi))
        assert tail.by_personality[p.name].equals(want), p.name
    assert tail.context is not None


def test_basis_bps_of_a_multiplied_perpetual_is_its_premium(tmp_path, replay_factory) -> None:
    """1000PEPEUSDT's spot pair is PEPEUSDT, 1000x cheaper: ingested from the replay by the
    real client into DuckDB and joined by the rule language, basis_bps is the premium the
    replay put between the two (not -99.9 %), and a 4-hour market's funding_rate is its own
    newest settlement."""
    from pipeline.config import load_settings
    from pipeline.context.ingest import ingest_context
    from pipeline.exchanges.bybit_context import BybitContext
    from pipeline.exchanges.protocol import Endpoint
    from pipeline.replay import context as cx
    from pipeline.strategy.context import read_context
    from tests.daemon import write_config

    odd = ["1000PEPEUSDT", "WIFUSDT"]
    ex = replay_factory(clock_start="2024-01-03T00:00:00Z", symbols=odd)
    cfg = write_config(tmp_path, top={"source": "replay", "exchanges": {"bybit": odd}})
    src = ex.market.source
    endpoint = Endpoint("replay", ex.rest_url, ex.ws_url, src.ident, src.label)
    wh = Warehouse(tmp_path / "w.duckdb", replica_sync=False)
    day = dt.datetime(2024, 1, 2, tzinfo=UTC)
    ingest_context(wh, load_settings(cfg), endpoint, day, day + DAY, closed_by=ex.now(), day=day)
    perp = pl.concat(
        [BybitContext(ex.rest_url).fetch_klines(s, day, day + DAY) for s in odd]
    ).select("symbol", "open_time", "close_time", "close")
    need = {"1m": {"basis_bps", "funding_rate"}}
    ctx = read_context(wh, "bybit", {"1m": (day, day + DAY)}, need)
    out = join_context({"1m": perp}, ctx, need)["1m"]
    pepe = out.filter(pl.col("symbol") == "1000PEPEUSDT")
    t = pepe["open_time"].dt.epoch("ms").to_numpy()
    truth = cx.premium(SEED, "1000PEPEUSDT", t) * 1e4
    # tolerance: the spot close's last decimal is under 0.5 bp of it (5 significant digits)
    assert pepe.height == 1440 and abs(pepe["basis_bps"].to_numpy() - truth).max() < 0.5
    wif = dict(
        out.filter(pl.col("symbol") == "WIFUSDT").select("close_time", "funding_rate").iter_rows()
    )
    settled = ctx.funding.filter(pl.col("symbol") == "WIFUSDT")  # type: ignore[union-attr]
    assert settled.height == 6  # 00:00, 04:00, ..., 20:00
    for known_at, rate in settled.select("known_at", "funding_rate").iter_rows():
        if known_at > day:  # the bar closing at a settlement reads that settlement
            assert wif[known_at] == rate
