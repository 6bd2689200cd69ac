"""Which exchange a home talks to, and which warehouse file its data lives in.

A home has ONE source, decided once and recorded in `<home>/source.json`: the configured
`source` (live or replay) on its first start, or, with `auto`, what the first start of an
empty home found (live Bybit if it answers within a few probes, else the replay exchange).
Every later command checks the configuration against that record and refuses a mismatch, so
candles of two sources never meet in one home. Every source also gets its own DuckDB file.

Before anything is written, the exchange itself is asked who it is (the replay exchange
names its market at `/_replay/health`; Bybit has no such page): a run never stores candles
from an exchange that is not the warehouse's source, whatever the URLs say.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline import jsonfile
from pipeline.config import BybitConfig, ConfigError, ReplayConfig, Settings
from pipeline.exchanges.protocol import Endpoint
from warehouse import Warehouse

BYBIT_DEFAULT_REST = BybitConfig().rest_url
BYBIT_DEFAULT_WS = BybitConfig().ws_url
RECORD = "source.json"
PROBE_ATTEMPTS = 3  # `auto` asks live Bybit this many times (with backoff) before choosing
Say = Callable[[str], None]


class SourceError(ConfigError):
    """The home's source cannot be used as asked; the message says what and how to proceed."""


@dataclass(frozen=True)
class Probe:
    """What one `GET /v5/market/time` found: it answered, nothing listens, or what failed."""

    ok: bool
    refused: bool
    detail: str


# What each venue is asked to show it is there: its clock (Bybit), its market list (Hyperliquid).
_PROBES: dict[str, tuple[str, bytes | None]] = {
    "bybit": ("/v5/market/time", None),
    "hyperliquid": ("/info", b'{"type": "meta"}'),
}


def probe(rest_url: str, timeout_s: float, venue: str = "bybit") -> Probe:
    """Ask the venue once whether it answers (Bybit: retCode 0; Hyperliquid: a market list)."""
    path, body = _PROBES[venue]
    req = urllib.request.Request(
        f"{rest_url}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return Probe(False, False, f"HTTP {err.code} {err.reason}")
    except urllib.error.URLError as err:
        refused = isinstance(err.reason, ConnectionRefusedError)
        return Probe(False, refused, f"connection failed: {err.reason}")
    except (OSError, ValueError, AttributeError) as err:
        return Probe(False, False, f"{type(err).__name__}: {str(err)[:120]}")
    if venue == "bybit" and (not isinstance(answer, dict) or answer.get("retCode") != 0):
        code = answer.get("retCode") if isinstance(answer, dict) else answer
        return Probe(False, False, f"answered retCode {code!r}")
    if venue == "hyperliquid" and not (isinstance(answer, dict) and "universe" in answer):
        return Probe(False, False, f"answered {str(answer)[:80]!r}, not a market list")
    return Probe(True, False, "answered")


def reachable(rest_url: str, timeout_s: float) -> bool:
    """True when `GET /v5/market/time` answers with retCode 0 within the timeout."""
    return probe(rest_url, timeout_s).ok


def probe_with_backoff(
    rest_url: str, timeout_s: float, attempts: int, say: Say | None = None, venue: str = "bybit"
) -> Probe:
    """Probe up to `attempts` times with the retry policy's backoff; the last result."""
    from pipeline.exchanges.retry import Policy, until_ok

    def retrying(p: Probe, attempt: int) -> None:
        if say:
            say(f"{rest_url}: {p.detail} (attempt {attempt}/{attempts}); retrying…")

    policy = Policy(backoff_s=0.5, backoff_cap_s=4.0)
    return until_ok(
        lambda: probe(rest_url, timeout_s, venue), lambda p: p.ok, attempts, policy, retrying
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.split(".", 1)[0]


def replay_identity(seed: int, data: str | None) -> tuple[str, str]:
    """(warehouse id, label) of a replay market: the data file's name, else the seed.

    The replay exchange reports the same id, so a client can tell which market it talks to.
    """
    if data:
        return f"replay-{_slug(_stem(str(data)))}", f"replay file={data}"
    ident = "replay" if seed == ReplayConfig().seed else f"replay-seed{seed}"
    return ident, f"replay seed={seed}"


def managed_replay(settings: Settings) -> bool:
    """True when the replay exchange is ours to start: no other exchange URL is configured."""
    return settings.bybit.rest_url == BYBIT_DEFAULT_REST


def replay_endpoint(settings: Settings) -> Endpoint:
    """The replay exchange: at SIGNALBOX_BYBIT_URL when that points elsewhere, else host:port."""
    r = settings.replay
    if not managed_replay(settings):
        rest = settings.bybit.rest_url
        ws = settings.bybit.ws_url
        if ws == BYBIT_DEFAULT_WS:
            ws = rest.replace("http", "ws", 1) + "/v5/public/linear"
    else:
        rest = f"http://{r.host}:{r.port}"
        ws = f"ws://{r.host}:{r.port}/v5/public/linear"
    ident, label = replay_identity(r.seed, r.data)
    return Endpoint("replay", rest, ws, ident, label)


def bybit_endpoint(settings: Settings) -> Endpoint:
    host = urlparse(settings.bybit.rest_url).hostname or "bybit"
    ident = "bybit" if settings.bybit.rest_url == BYBIT_DEFAULT_REST else f"bybit-{_slug(host)}"
    return Endpoint("live", settings.bybit.rest_url, settings.bybit.ws_url, ident, f"bybit {host}")


def configured(settings: Settings, kind: str) -> Endpoint:
    """The endpoint of a source kind: `replay`, or `live` (`bybit` in records written before
    there were several venues)."""
    return replay_endpoint(settings) if kind == "replay" else bybit_endpoint(settings)


# -- the home's record ---------------------------------------------------------------------
def record_path(settings: Settings) -> Path:
    return settings.home / RECORD


def recorded(settings: Settings) -> dict | None:
    """The home's recorded source, or None before its first start."""
    try:
        return jsonfile.read(record_path(settings), {"kind", "warehouse_id", "label"})
    except jsonfile.Unreadable as err:
        raise SourceError(
            f"{err}; it records which exchange this home's data comes from. Restore it, or "
            "delete it to decide again from the configuration."
        ) from None


def _record(settings: Settings, ep: Endpoint, why: str) -> None:
    """Write the record atomically (a crash leaves the old one or the new one)."""
    rec = {**asdict(ep), "chosen_by": why, "chosen_at": dt.datetime.now(dt.UTC).isoformat()}
    jsonfile.replace(record_path(settings), rec)


def _warehouse_ids(settings: Settings) -> list[str]:
    d = settings.warehouse_dir
    names = d.glob("*.duckdb") if d.is_dir() else []
    return sorted(p.stem for p in names if not p.stem.endswith(".replica"))


def _mismatch(settings: Settings, rec: dict, ep: Endpoint) -> SourceError:
    return SourceError(
        f"this home ({settings.home}) holds data from {rec['label']} (recorded "
        f"{rec.get('chosen_at', '?')[:19]}, {rec.get('chosen_by', 'at its first start')}), but "
        f"the configuration now asks for {ep.label}. One home never mixes two sources: use "
        "another home for it (SIGNALBOX_HOME or `home:` in signalbox.yaml), or set the "
        f"configuration back (source, replay.data, replay.seed, SIGNALBOX_BYBIT_URL). To re-bind "
        f"this home on purpose, delete {record_path(settings)} (each source keeps its own "
        "warehouse file)."
    )


def home_source(settings: Settings, say: Say | None = None, decide: bool = True) -> Endpoint:
    """The home's source: the record, checked against the configuration.

    Without a record, an explicit `source` is taken as is; `auto` adopts the home's only
    warehouse, or, in an empty home, probes live Bybit `PROBE_ATTEMPTS` times with backoff,
    chooses and says what it chose. Only with `decide` (commands that start work) is the
    choice recorded or an empty `auto` home decided; readers never write.
    """
    rec = recorded(settings)
    if rec is None:
        if settings.source != "auto":
            ep = configured(settings, settings.source)
            if decide:
                _record(settings, ep, f"configured source: {settings.source}")
            return ep
        existing = _warehouse_ids(settings)
        if len(existing) > 1:
            raise SourceError(
                f"this home ({settings.home}) has warehouses of several sources "
                f"({', '.join(existing)}) and no record of which is its own; set `source:` "
                "(live or replay) in signalbox.yaml or SIGNALBOX_SOURCE to choose"
            )
        if existing:
            kind = "replay" if existing[0].startswith("replay") else "live"
            ep = configured(settings, kind)
            if ep.warehouse_id != existing[0]:
                raise SourceError(
                    f"this home ({settings.home}) holds the warehouse {existing[0]}.duckdb, but "
                    f"the configuration describes {ep.label}; set the configuration to match "
                    "or use another home"
                )
            if decide:
                _record(settings, ep, f"auto: adopted the existing warehouse {existing[0]}.duckdb")
            return ep
        if not decide:
            raise SourceError(
                f"this home ({settings.home}) has no data source yet: start it once with "
                "`signalbox up` (make run) or `signalbox backfill`, or set `source:`"
            )
        ep, why = _choose(settings, say)
        _record(settings, ep, why)
        if say:
            say(f"source: {ep.label} ({why}); recorded in {record_path(settings)}")
        return ep
    want = rec["kind"] if settings.source == "auto" else settings.source
    ep = configured(settings, want)
    if ep.warehouse_id != rec["warehouse_id"]:
        raise _mismatch(settings, rec, ep)
    return ep


def _choose(settings: Settings, say: Say | None) -> tuple[Endpoint, str]:
    """`auto` on the first start of an empty home: the live venues if EVERY configured one
    answers, else replay (a home has one source: never one venue live and another replayed)."""
    from pipeline.markets import VENUE_NAMES, by_venue

    for venue in by_venue(settings.markets):
        section = getattr(settings, venue)
        url, timeout = section.rest_url, section.probe_timeout_s
        name = VENUE_NAMES[venue]
        if say:
            say(f"auto: probing live {name} at {url} ({PROBE_ATTEMPTS} tries, {timeout:g} s each)…")
        p = probe_with_backoff(url, timeout, PROBE_ATTEMPTS, say, venue)
        if not p.ok:
            why = f"auto: live {name} did not answer {PROBE_ATTEMPTS} probes ({p.detail})"
            return replay_endpoint(settings), why
    names = " and ".join(VENUE_NAMES[v] for v in by_venue(settings.markets))
    return bybit_endpoint(settings), f"auto: live {names} answered"


def current(settings: Settings) -> Endpoint:
    """The home's source, without deciding or recording one (for readers and run processes)."""
    return home_source(settings, decide=False)


# -- the exchange's own word -----------------------------------------------------------------
def replay_health(rest_url: str, timeout_s: float = 5.0) -> dict | None:
    """What a replay exchange says of itself at `/_replay/health`; None for anything else."""
    try:
        with urllib.request.urlopen(f"{rest_url}/_replay/health", timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def exchange_identity(rest_url: str, timeout_s: float = 5.0) -> str | None:
    """The market id a replay exchange reports; None for anything else (Bybit)."""
    ident = (replay_health(rest_url, timeout_s) or {}).get("source_id")
    return str(ident) if ident else None


def refuse_unlisted(settings: Settings, endpoint: Endpoint) -> None:
    """Refuse configured symbols a venue does not list, naming them, before any run."""
    from pipeline.exchanges import client
    from pipeline.markets import by_venue

    problems = []
    for venue, symbols in by_venue(settings.markets).items():
        c = client(venue, settings, endpoint)
        try:
            refused = c.unlisted(symbols)
        finally:
            c.close()
        if refused:
            what = "; ".join(f"{s}: {why}" for s, why in refused.items())
            problems.append(f"{', '.join(refused)} not listed on {venue} ({what})")
    if not problems:
        return
    listed = (replay_health(endpoint.rest_url) or {}).get("symbols")
    hint = f"; it lists {', '.join(listed)}" if listed else ""
    raise SourceError(
        f"{'; '.join(problems)} at {endpoint.label} ({endpoint.rest_url}). Nothing was run. "
        f"Check the spelling (each venue's own symbols, e.g. BTCUSDT on bybit){hint}."
    )


def verify(endpoint: Endpoint) -> None:
    """Refuse an exchange that is not the endpoint's source (before anything is written)."""
    found = exchange_identity(endpoint.rest_url)
    want = endpoint.warehouse_id if endpoint.kind == "replay" else None
    if found == want:
        return
    serves = f"the replay market {found!r}" if found else "no replay market (so not this replay)"
    raise SourceError(
        f"the exchange at {endpoint.rest_url} serves {serves}, but this home's source is "
        f"{endpoint.label} (warehouse {endpoint.warehouse_id}.duckdb). Nothing was written. "
        "Point SIGNALBOX_BYBIT_URL at the right exchange (or stop the one listening there); "
        "Signalbox never stores candles from another source."
    )


def warehouse_for(settings: Settings, endpoint: Endpoint | None = None) -> Warehouse:
    """The warehouse file of the home's source."""
    ep = endpoint or current(settings)
    return Warehouse(settings.warehouse_dir / f"{ep.warehouse_id}.duckdb")
