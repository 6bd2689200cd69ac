"""The replay exchange's public WebSocket behaves like Bybit's, for raw clients and for pybit."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest
from websockets.sync.client import connect

from pipeline.replay import synthetic

MIN = 60_000


def recv_json(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def until(ws: Any, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = recv_json(ws, timeout=max(deadline - time.monotonic(), 0.01))
        if pred(msg):
            return msg
    raise AssertionError("no matching message")


def test_ping_gets_bybit_linear_pong(replay_session):
    with connect(replay_session.ws_url) as ws:
        ws.send(json.dumps({"req_id": "100001", "op": "ping"}))
        raw = ws.recv(timeout=5)
        assert '"ret_msg":"pong"' in raw
        msg = json.loads(raw)
        assert msg["success"] is True and msg["op"] == "ping" and msg["req_id"] == "100001"
        assert msg["conn_id"]


def test_option_channel_pongs_with_op_pong(replay_session):
    url = replay_session.ws_url.replace("/linear", "/option")
    with connect(url) as ws:
        ws.send(json.dumps({"op": "ping", "req_id": "x"}))
        msg = recv_json(ws)
        assert msg["op"] == "pong" and msg["req_id"] == "x" and msg["args"]


def test_subscribe_ack_echoes_req_id_and_bad_topic_fails_the_batch(replay_session):
    with connect(replay_session.ws_url.replace("/linear", "/spot")) as ws:
        ws.send(
            json.dumps(
                {"req_id": "b1", "op": "subscribe", "args": ["kline.1.BTCUSDT", "kline.2.BTCUSDT"]}
            )
        )
        fail = recv_json(ws)
        assert fail == {
            "success": False,
            "ret_msg": "error:handler not found,topic:kline.2.BTCUSDT",
            "conn_id": fail["conn_id"],
            "req_id": "b1",
            "op": "subscribe",
        }
        ws.send(json.dumps({"op": "subscribe", "args": ["kline.1.NOTLISTED"]}))
        assert recv_json(ws)["ret_msg"] == "error:handler not found,topic:kline.1.NOTLISTED"
        ws.send(json.dumps({"req_id": "ok1", "op": "subscribe", "args": ["kline.5.BTCUSDT"]}))
        ack = until(ws, lambda m: m.get("op") == "subscribe")
        assert ack["success"] is True and ack["req_id"] == "ok1" and ack["ret_msg"] == ""
        ws.send(json.dumps({"req_id": "u1", "op": "unsubscribe", "args": ["kline.5.BTCUSDT"]}))
        unack = until(ws, lambda m: m.get("op") == "unsubscribe")
        assert unack["success"] is True and unack["req_id"] == "u1"


def test_kline_pushes_forming_updates_then_confirm_at_close(replay_factory):
    ex = replay_factory(clock_start="2024-01-01T23:59:57Z", clock_speed=60, ws_push_s=0.1)
    with connect(ex.ws_url) as ws:
        ws.send(json.dumps({"req_id": "k", "op": "subscribe", "args": ["kline.1.BTCUSDT"]}))
        first = until(ws, lambda m: m.get("topic") == "kline.1.BTCUSDT")
        assert first["type"] == "snapshot"
        item = first["data"][0]
        assert item["confirm"] is False and item["interval"] == "1"
        assert item["end"] == item["start"] + MIN - 1
        assert all(isinstance(item[k], str) for k in ("open", "high", "low", "close", "volume"))
        confirmed = until(ws, lambda m: m.get("data", [{}])[0].get("confirm") is True)["data"][0]
        start = confirmed["start"]
        assert start >= item["start"]
        truth = synthetic.candles("BTCUSDT", start, start + MIN)[0]
        got = [float(confirmed[k]) for k in ("open", "high", "low", "close", "volume", "turnover")]
        np.testing.assert_array_equal(got, truth[1:])
        assert confirmed["timestamp"] >= start + MIN  # pushed once the clock passed the close
        nxt = until(ws, lambda m: m["data"][0]["confirm"] is False)["data"][0]
        assert nxt["start"] > start


def test_at_a_close_every_topics_confirm_comes_before_any_forming_candle(replay_factory):
    """One message per topic, as Bybit; the close's confirms first (a subscriber of many
    symbols has them all before the forming candles of the next minute)."""
    ex = replay_factory(clock_start="2024-01-01T23:59:58Z", clock_speed=30, ws_push_s=0.05)
    topics = [f"kline.1.{s}" for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    with connect(ex.ws_url) as ws:
        ws.send(json.dumps({"req_id": "k", "op": "subscribe", "args": topics}))
        until(ws, lambda m: m.get("data", [{}])[0].get("confirm") is False)
        first = until(ws, lambda m: m.get("data", [{}])[0].get("confirm") is True)
        after = [recv_json(ws) for _ in range(2 * len(topics) - 1)]
    seen = [(m["topic"], m["data"][0]["confirm"]) for m in [first, *after]]
    assert sorted(seen[: len(topics)]) == [(t, True) for t in sorted(topics)], seen
    assert sorted(seen[len(topics) :]) == [(t, False) for t in sorted(topics)], seen


def test_daily_topic_pushes_the_forming_day(replay_factory):
    ex = replay_factory(clock_start="2024-01-01T12:00:00Z", ws_push_s=0.1)
    with connect(ex.ws_url) as ws:
        ws.send(json.dumps({"op": "subscribe", "args": ["kline.D.BTCUSDT"]}))
        item = until(ws, lambda m: "topic" in m)["data"][0]
        assert item["start"] == 1704067200000 and item["end"] == 1704067200000 + 86_400_000 - 1
        noon = synthetic.candles("BTCUSDT", 1704067200000, 1704067200000 + 720 * MIN)
        assert float(item["open"]) == noon[0, 1]
        assert float(item["high"]) >= noon[:, 2].max()


@pytest.mark.timeout(60)
def test_pybit_websocket_streams_klines_from_the_replay(replay_factory, monkeypatch):
    import pybit.unified_trading as ut

    ex = replay_factory(clock_start="2024-01-01T23:59:58Z", clock_speed=60, ws_push_s=0.2)
    monkeypatch.setattr(ut, "PUBLIC_WSS", ex.pybit_public_wss)
    got: list[dict[str, Any]] = []
    closed = threading.Event()

    def on_kline(msg: dict[str, Any]) -> None:
        got.append(msg)
        if msg["data"][0]["confirm"]:
            closed.set()

    ws = ut.WebSocket(testnet=False, channel_type="linear")
    try:
        ws.kline_stream(interval=1, symbol="BTCUSDT", callback=on_kline)
        assert closed.wait(15), "no confirmed candle pushed"
        ws._send_custom_ping()  # pybit's heartbeat ({"op": "ping"}), normally every 20 s
        deadline = time.monotonic() + 10
        while ex.stats()["ws_ops"].get("ping", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ex.stats()["ws_ops"].get("ping", 0) == 1
        n = len(got)
        deadline = time.monotonic() + 10
        while len(got) <= n + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ws.is_connected() and len(got) > n + 2  # the pong did not break pybit's handler
    finally:
        ws.exit()
    msg = next(m for m in got if m["data"][0]["confirm"])
    assert msg["topic"] == "kline.1.BTCUSDT"
    start = msg["data"][0]["start"]
    assert float(msg["data"][0]["close"]) == synthetic.candles("BTCUSDT", start, start + MIN)[0, 4]
