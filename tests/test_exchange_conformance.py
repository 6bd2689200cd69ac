"""Both venues behind one protocol: the same questions, the same kind of answers.

Each venue's client comes from `pipeline.exchanges.client(name, settings, endpoint)` at the
one replay exchange (its Bybit face and its Hyperliquid face), as the pipeline gets it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading

import polars as pl
import pytest

from pipeline.candles.timeframes import KLINE_COLUMNS
from pipeline.exchanges import client
from pipeline.exchanges.protocol import (
    ClosedCandle,
    Endpoint,
    Exchange,
    InvalidRequest,
)
from pipeline.markets import VENUES

UTC = dt.UTC
MIN = dt.timedelta(minutes=1)
NOW = dt.datetime(2024, 1, 10, 0, 0, 30, tzinfo=UTC)
SYMBOL = {"bybit": "BTCUSDT", "hyperliquid": "BTC"}


@pytest.fixture(params=VENUES)
def venue(request, replay_factory, home):
    from pipeline.config import load_settings

    ex = replay_factory(clock_start=NOW, ws_push_s=0.2)
    ep = Endpoint("replay", ex.rest_url, ex.ws_url, "replay", "replay seed=7")
    c = client(request.param, load_settings(env={}), ep)
    yield request.param, c, ex
    c.close()


def test_every_venue_is_an_exchange_named_for_itself(venue):
    name, c, _ = venue
    assert isinstance(c, Exchange) and c.name == name == type(c).name


def test_the_clock_and_the_instrument_list(venue):
    name, c, ex = venue
    assert abs(c.server_time() - ex.now()) < dt.timedelta(seconds=2)  # Hyperliquid: whole s
    assert SYMBOL[name] in c.instruments()
    assert list(c.unlisted([SYMBOL[name], "NOPE"])) == ["NOPE"]


def test_closed_candles_in_the_kline_layout(venue):
    name, c, ex = venue
    start = NOW - 180 * MIN
    got = c.fetch_klines(SYMBOL[name], start, NOW + 10 * MIN)
    assert got.columns == list(KLINE_COLUMNS) and got.height == 179  # 21:01 .. 23:59
    assert got.schema["open_time"] == pl.Datetime("us", "UTC")
    assert got["open_time"].is_sorted() and got["open_time"].n_unique() == got.height
    assert (got["close_time"] - got["open_time"]).unique().to_list() == [dt.timedelta(minutes=1)]
    assert got["close_time"].max() <= ex.now() and (got["symbol"] == SYMBOL[name]).all()
    assert c.latest_closed_open_time(SYMBOL[name]) == got["open_time"].max()
    assert got["turnover"].null_count() == (got.height if name == "hyperliquid" else 0)


def test_an_unknown_symbol_is_an_invalid_request_naming_it(venue):
    _, c, _ = venue
    with pytest.raises(InvalidRequest, match="NOPE"):
        c.fetch_klines("NOPE", NOW - 10 * MIN, NOW)


def test_the_stream_passes_each_closed_candle_once_as_rest_has_it(venue):
    name, c, ex = venue
    ex.set_clock(speed=60)  # a minute a second
    got: list[ClosedCandle] = []
    enough = threading.Event()

    def on_candle(candle: ClosedCandle) -> None:
        got.append(candle)
        if len(got) >= 3:
            enough.set()

    stream = c.stream([SYMBOL[name]], on_candle)
    try:
        assert enough.wait(20)
    finally:
        stream.close()
    opens = [g.open_time for g in got]
    assert all(b - a == MIN for a, b in itertools.pairwise(opens))
    rest = c.fetch_klines(SYMBOL[name], opens[0], opens[-1] + MIN)
    assert [(g.open, g.high, g.low, g.close, g.volume) for g in got] == list(
        rest.select("open", "high", "low", "close", "volume").iter_rows()
    )


def test_no_venue_client_imports_the_replay():
    """The production clients never import their test double (pipeline.replay)."""
    import ast
    from pathlib import Path

    room = Path(__file__).resolve().parent.parent / "pipeline" / "exchanges"
    for path in sorted(room.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            assert not any(n.startswith("pipeline.replay") for n in names), path.name
