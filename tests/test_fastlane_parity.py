"""The `fast_lane_parity` check on `signals`, in-process (`dg.materialize`) on a real warehouse:
a live-like partition (the replay exchange's clock stands at 20:00 of the day, so the pipeline
has reached only its first hours) and fast-lane journals written beside it."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pytest

from assets import klines, signals, timeframes
from pipeline.fastlane import journal, parity
from pipeline.orchestration import tags
from pipeline.orchestration.resources import resources
from tests.daemon import write_config
from tests.fx_replay import SEED, endpoint_json

CHECK = "fast_lane_parity"


@dataclass
class LiveDay:
    res: dict[str, Any]
    day: dt.date
    first: dg.ExecuteInProcessResult

    @property
    def home(self):
        return self.res["settings"].get().home

    def rows(self) -> list[dict[str, Any]]:
        """The pipeline's signals of the day, oldest first."""
        start = dt.datetime.combine(self.day, dt.time(), dt.UTC)
        return list(
            self.res["warehouse"]
            .get()
            .query(
                "SELECT * FROM signals WHERE close_time > ? AND close_time <= ?"
                " ORDER BY close_time, symbol, personality, timeframe",
                [start, start + dt.timedelta(days=1)],
            )
            .iter_rows(named=True)
        )

    def reached(self, symbol: str) -> dt.datetime:
        """The latest bar close the pipeline has of `symbol` (what a run compares up to)."""
        return (
            self.res["warehouse"]
            .get()
            .query(
                "SELECT max(close_time) AS t FROM candles WHERE exchange = 'bybit' AND symbol = ?",
                [symbol],
            )["t"][0]
        )

    def journal(self, rows: list[dict[str, Any]]) -> None:
        shutil.rmtree(self.home / "fastlane", ignore_errors=True)
        journal.append(self.home, rows)

    def check(self) -> dg.AssetCheckEvaluation:
        """Materialize `signals` (its inputs are stored) as the live sensor's run of the
        minute does, and return the parity check."""
        result = materialize([signals.signals], self.res, self.day, live=True)
        assert result.success  # a divergence is the fast lane's fault: the run still succeeds
        return parity_of(result)


def materialize(
    assets: list[Any], res: dict[str, Any], day: dt.date, live: bool = False
) -> dg.ExecuteInProcessResult:
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize(
            assets,
            partition_key=day.isoformat(),
            resources=res,
            instance=instance,
            tags=tags.sensor_tags(tags.LIVE, "19:59–20:00") if live else None,
        )


def parity_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (ev,) = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        and e.asset_check_evaluation_data.check_name == CHECK
    ]
    return ev


def counts(ev: dg.AssetCheckEvaluation) -> dict[str, int]:
    names = ("fast_lane_signals", "compared", "agreed", "pending", "not_in_pipeline")
    names += ("differing", "changed_mind", "pipeline_only")
    return {n: ev.metadata[n].value for n in names}


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveDay]:
    """Yesterday up to 20:00 on the replay exchange's clock, klines through signals, once."""
    from pipeline.replay import ExchangeClock, ReplayExchange

    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()
    clock = ExchangeClock(dt.datetime.combine(day, dt.time(20), dt.UTC))
    tmp = tmp_path_factory.mktemp("parity")
    with ReplayExchange(seed=SEED, clock=clock) as replay:
        endpoint = endpoint_json(replay)
        cfg = write_config(tmp, top={"source": "replay"})
        res = resources(config_path=str(cfg), endpoint=endpoint)
        inputs = materialize(
            [klines.klines_1m, timeframes.candles, timeframes.indicators], res, day
        )
        assert inputs.success
        yield LiveDay(res, day, materialize([signals.signals], res, day, live=True))


def test_without_a_journal_there_is_nothing_to_compare(live):
    assert live.first.success
    ev = parity_of(live.first)
    rows = live.rows()
    assert ev.passed and "no fast-lane signals" in (ev.description or "")
    assert counts(ev)["fast_lane_signals"] == 0 and counts(ev)["pipeline_only"] == len(rows)
    # a live-like partition: the pipeline has only the day's first hours, with signals in them
    assert len(rows) >= 5 and max(r["close_time"] for r in rows).hour <= 20


def test_a_journal_equal_to_the_pipeline_passes(live):
    rows = live.rows()
    live.journal(rows)
    ev = live.check()
    assert ev.passed, ev.description
    assert counts(ev) == {
        "fast_lane_signals": len(rows), "compared": len(rows), "agreed": len(rows),
        "pending": 0, "not_in_pipeline": 0, "differing": 0, "changed_mind": 0,
        "pipeline_only": 0,
    }  # fmt: skip


def test_a_silent_fast_lane_and_bars_not_reached_yet_are_not_failures(live):
    rows = live.rows()
    kept = rows[::2]  # the fast lane was silent on every other signal
    last = rows[-1]
    ahead = live.reached(last["symbol"]) + dt.timedelta(hours=1)
    pending = {  # a bar the pipeline has not reached: whatever it says is not compared yet
        **last,
        "close_time": ahead,
        "open_time": ahead - (last["close_time"] - last["open_time"]),
        "action": "SELL" if last["action"] == "BUY" else "BUY",
    }
    live.journal([*kept, pending])
    ev = live.check()
    assert ev.passed, ev.description
    c = counts(ev)
    assert (c["compared"], c["agreed"], c["pending"]) == (len(kept), len(kept), 1)
    assert c["pipeline_only"] == len(rows) - len(kept)


def _other(action: str) -> str:
    return "SELL" if action == "BUY" else "BUY"


def _unsignalled_bar(rows: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any]:
    """`r` moved to the latest earlier bar of its key on which the pipeline has no signal."""
    keys = {(x["symbol"], x["personality"], x["timeframe"], x["close_time"]) for x in rows}
    step = r["close_time"] - r["open_time"]
    close = next(
        r["close_time"] - k * step
        for k in range(1, 100)
        if (r["symbol"], r["personality"], r["timeframe"], r["close_time"] - k * step) not in keys
    )
    return {**r, "close_time": close, "open_time": close - step}


# name -> (the journal's lines for the pipeline's row `r`, the problem listed, the counter)
DIVERGENCES = {
    "action": (
        lambda rows, r: [{**r, "action": _other(r["action"])}],
        "differs: action",
        "differing",
    ),
    "confidence_1e-6": (
        lambda rows, r: [
            {**r, "confidence": r["confidence"] + (1e-6 if r["confidence"] < 0.5 else -1e-6)}
        ],
        "differs: confidence",
        "differing",
    ),
    "reasons": (
        lambda rows, r: [{**r, "reasons": [*r["reasons"][:-1], "rsi_14 < 31"]}],
        "differs: reasons",
        "differing",
    ),
    "quality": (
        lambda rows, r: [{**r, "quality": "degraded: 1 bar missing"}],
        "differs: quality",
        "differing",
    ),
    "extra_signal": (
        lambda rows, r: [r, _unsignalled_bar(rows, r)],
        "not in the pipeline",
        "not_in_pipeline",
    ),
    # journaled, changed, changed back: the last line agrees, but the first to go out did not
    "changed_mind": (
        lambda rows, r: [r, {**r, "action": _other(r["action"])}, r],
        "journaled twice, differently: action",
        "changed_mind",
    ),
}


@pytest.mark.parametrize("kind", list(DIVERGENCES))
def test_a_divergence_fails_the_check_with_its_row_in_the_metadata(live, kind):
    make, problem, counter = DIVERGENCES[kind]
    rows = live.rows()
    r = rows[len(rows) // 2]
    lines = make(rows, r)
    live.journal([*(x for x in rows if x is not r), *lines])
    ev = live.check()
    assert not ev.passed
    got = counts(ev)
    assert got[counter] == (2 if kind == "changed_mind" else 1)  # changed, then changed back
    assert sum(got[n] for n in ("differing", "not_in_pipeline", "changed_mind")) == got[counter]
    table = ev.metadata["differences"].value
    row = lines[-1] if kind == "extra_signal" else r
    close = row["close_time"].astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    listed = [x for x in table.splitlines() if close in x and problem in x]
    assert listed, f"{problem} at {close} not listed:\n{table}"
    assert row["personality"] in listed[0] and f"bybit:{row['symbol']}" in listed[0]
    assert "the fast lane diverges from the pipeline" in (ev.description or "")
    if kind == "reasons":
        assert "rsi_14 < 31" in listed[0]


def test_rounding_noise_within_the_tolerance_is_agreement():
    """Plain Python, no run: 1e-9 is the stated tolerance, not exact equality."""
    close = dt.datetime(2026, 1, 5, 12, 1, tzinfo=dt.UTC)
    row = {
        "exchange": "bybit", "symbol": "BTCUSDT", "personality": "scalping", "timeframe": "1m",
        "open_time": close - dt.timedelta(minutes=1), "close_time": close, "action": "BUY",
        "confidence": 0.5714285714285714, "price": 64436.5, "reasons": ["a", "b"], "quality": "ok",
    }  # fmt: skip
    noisy = journal.record({**row, "confidence": row["confidence"] + 4e-10})
    reached = {("bybit", "BTCUSDT"): close}
    p = parity.compare([noisy], [row], reached, changed=[(journal.record(row), noisy)])
    assert p.passed and (p.agreed, p.changed_mind) == (1, 0)
    off = journal.record({**row, "confidence": row["confidence"] + 2e-9})
    p = parity.compare([off], [row], reached, changed=[(journal.record(row), off)])
    assert not p.passed and (p.differing, p.changed_mind) == (1, 1)
