"""The sidecar's wire format: one JSON object per line, each with `type` and `schema`.

Server to client: `hello`, `signal`, `heartbeat`, `gap`, `error`, `status`. Client to server:
one `{"op": "subscribe", ...}` (optionally with `token`), `{"op": "auth", "token": ...}`, or
`{"op": "status"}` (answered by one `status` line with the sidecar's pid and subscriber
count, then the server closes the connection; `signalbox status` asks this). Lines
are plain UTF-8 text so `socat - UNIX-CONNECT:<path>` is a working client. Signal lines are
encoded once, by the publisher, and forwarded byte for byte; everything here is shared by the
publisher, the server and the client so the three cannot drift apart.

A `signal` carries `"replayed": false` when it is pushed live, as it is published, and
`"replayed": true` when it is sent from the past: the latest-per-key snapshot on connect (only
signals whose bar closed within `sidecar.signal_ttl_minutes` of the sidecar's wall clock), a
`since_seq` replay, history kept across a restart. A replayed signal may be old news: judge it
by its `close_time` and `expires_at`, never act on it as if it had just been published. (Lines
written before the field existed have no `replayed` on live delivery; treat a missing one as
false.)

A `signal` also says which lane computed it: `"origin": "fast"` (the always-on fast lane,
pipeline/fastlane) or `"origin": "pipeline"` (the Dagster run, the system of record). Both lanes
publish through one outbox that lets each (exchange, symbol, personality, timeframe,
close_time) out once, so a subscriber gets a signal from whichever lane was first and never
twice. The field was added without changing `SCHEMA`: it only adds a key, every existing field
keeps its meaning, and a line written before it existed has no `origin` (it came from the
pipeline, the only lane then; treat a missing one as "pipeline").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 1
MAX_LINE = 64 * 1024  # bytes; a longer request line is refused
SUBSCRIBE_KEYS = frozenset({"op", "symbols", "personalities", "timeframes", "since_seq", "token"})
# sun_path holds 108 bytes including the NUL; longer paths are reached through /proc.
_SUN_PATH_MAX = 107


class ProtocolError(ValueError):
    """A bad client request: `code` is machine-readable, the message says what to fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode(msg: dict[str, Any]) -> bytes:
    """One message as one line (compact, UTF-8, newline-terminated)."""
    try:
        return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate echoed from a client's request
        return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def iso(t: dt.datetime) -> str:
    """ISO 8601 in UTC with a `Z` suffix (what every timestamp on the wire looks like)."""
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


_LIVE_END = b',"replayed":false}\n'
_REPLAYED_END = b',"replayed":true}\n'


def replayed(line: bytes) -> bytes:
    """A signal line as sent from history: `"replayed": true`. The publisher writes the field
    last, so this is a byte splice; an older line without it is re-encoded."""
    if line.endswith(_LIVE_END):
        return line[: -len(_LIVE_END)] + _REPLAYED_END
    msg = json.loads(line)
    msg["replayed"] = True
    return encode(msg)


def hello(seq: int, oldest_seq: int, heartbeat_s: float, version: str) -> bytes:
    return encode(
        {
            "type": "hello",
            "schema": SCHEMA,
            "server": "signalbox-sidecar",
            "version": version,
            "seq": seq,
            "oldest_seq": oldest_seq,
            "heartbeat_s": heartbeat_s,
        }
    )


def status(seq: int, subscribers: int, version: str) -> bytes:
    """The answer to `{"op": "status"}`: who serves, how many subscribe, the latest seq."""
    return encode(
        {
            "type": "status",
            "schema": SCHEMA,
            "server": "signalbox-sidecar",
            "version": version,
            "pid": os.getpid(),
            "subscribers": subscribers,
            "seq": seq,
        }
    )


def heartbeat(seq: int, now: dt.datetime) -> bytes:
    return encode({"type": "heartbeat", "schema": SCHEMA, "seq": seq, "time": iso(now)})


def error(code: str, message: str, *, fatal: bool = False) -> bytes:
    """`fatal` tells the client the server is closing the connection after this line."""
    return encode(
        {"type": "error", "schema": SCHEMA, "code": code, "message": message, "fatal": fatal}
    )


def gap(since_seq: int, oldest_seq: int) -> bytes:
    """The replay history no longer reaches back to `since_seq`: say so, then carry on."""
    return encode(
        {
            "type": "gap",
            "schema": SCHEMA,
            "since_seq": since_seq,
            "oldest_seq": oldest_seq,
            "message": f"signals {since_seq + 1}..{oldest_seq - 1} are no longer in the "
            f"replay history; replaying from {oldest_seq}",
        }
    )


@dataclass(frozen=True)
class Filter:
    """Which keys a subscriber wants; None means any."""

    symbols: frozenset[str] | None = None
    personalities: frozenset[str] | None = None
    timeframes: frozenset[str] | None = None

    @property
    def everything(self) -> bool:
        return self.symbols is None and self.personalities is None and self.timeframes is None

    def matches(self, key: tuple[str, str, str]) -> bool:
        """`key`: (exchange:symbol, personality, timeframe); a symbol filter names either the
        market (`hyperliquid:BTC`) or the symbol on any venue (`BTC`)."""
        market, pers, tf = key
        return (
            (
                self.symbols is None
                or market in self.symbols
                or market.partition(":")[2] in self.symbols
            )
            and (self.personalities is None or pers in self.personalities)
            and (self.timeframes is None or tf in self.timeframes)
        )


@dataclass(frozen=True)
class Request:
    """A parsed client line: `op` is "subscribe", "auth" or "status"."""

    op: str
    filter: Filter = Filter()
    since_seq: int | None = None
    token: str | None = None


def _names(msg: dict[str, Any], field: str, allowed: list[str] | None) -> frozenset[str] | None:
    v = msg.get(field)
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise ProtocolError(
            "invalid_filter", f"{field} must be a non-empty list of strings (omit it for all)"
        )
    if field == "symbols":  # BTCUSDT (any venue, as typed in any case) or hyperliquid:kPEPE
        v = [
            f"{x.partition(':')[0].lower()}:{x.partition(':')[2]}" if ":" in x else x.upper()
            for x in v
        ]
    if allowed is not None:
        unknown = sorted(set(v) - set(allowed))
        if unknown:
            raise ProtocolError(
                "invalid_filter", f"unknown {field} {unknown}; known: {', '.join(allowed)}"
            )
    return frozenset(v)


def parse_request(
    line: bytes, personalities: list[str] | None = None, timeframes: list[str] | None = None
) -> Request:
    """Validate one client line; raises ProtocolError saying what is wrong with it."""
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        raise ProtocolError(
            "not_json", 'request is not a JSON object; send e.g. {"op":"subscribe"}'
        ) from None
    if not isinstance(msg, dict):
        raise ProtocolError("not_object", 'request must be a JSON object, e.g. {"op":"subscribe"}')
    op = msg.get("op")
    token = msg.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError("invalid_token", "token must be a string")
    if op == "auth":
        if token is None:
            raise ProtocolError("invalid_token", 'auth needs a token: {"op":"auth","token":"..."}')
        return Request("auth", token=token)
    if op == "status":
        return Request("status", token=token)
    if op != "subscribe":
        raise ProtocolError("unknown_op", f"unknown op {op!r}; use 'subscribe', 'auth' or 'status'")
    extra = sorted(set(msg) - SUBSCRIBE_KEYS)
    if extra:
        raise ProtocolError(
            "invalid_filter", f"unknown field(s) {extra}; allowed: {sorted(SUBSCRIBE_KEYS)}"
        )
    since = msg.get("since_seq")
    if since is not None and (type(since) is not int or since < 0):
        raise ProtocolError("invalid_since_seq", "since_seq must be a whole number >= 0")
    flt = Filter(
        _names(msg, "symbols", None),
        _names(msg, "personalities", personalities),
        _names(msg, "timeframes", timeframes),
    )
    return Request("subscribe", flt, since, token)


def subscribe_line(
    symbols: list[str] | None = None,
    personalities: list[str] | None = None,
    timeframes: list[str] | None = None,
    since_seq: int | None = None,
    token: str | None = None,
) -> bytes:
    msg: dict[str, Any] = {"op": "subscribe"}
    for k, v in (
        ("symbols", symbols),
        ("personalities", personalities),
        ("timeframes", timeframes),
        ("since_seq", since_seq),
        ("token", token),
    ):
        if v is not None:
            msg[k] = v
    return encode(msg)


def connect_unix(path: Path, timeout: float) -> socket.socket:
    """A connected Unix socket to `path` (OSError when nothing serves there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with unix_address(path) as addr:
            sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def serving(path: Path, timeout: float = 0.5) -> bool:
    """Does a server accept connections on the Unix socket `path`?"""
    try:
        connect_unix(path, timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for bind/connect even when `path` is longer than sun_path allows
    (deep pytest tmp dirs): the directory is then reached through /proc/self/fd."""
    text = str(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
