"""Parity of the fast lane with the pipeline, the system of record: every signal the fast lane
computed (its journal, pipeline.fastlane.journal) for a bar the pipeline has reached must be
one of the pipeline's rows with the same action, confidence within CONFIDENCE_ATOL, the same
reasons, quality and open_time, and the same price within PRICE_RTOL (what a bot acts on).

What fails, and what does not:
- a journal signal with no pipeline row, or one that differs: the fast lane published
  something the pipeline does not stand behind. Fails.
- a key the fast lane journaled twice with different content (`journal.conflicts`): it
  changed its mind, so what went out first may have been wrong. Fails.
- a pipeline row the journal lacks: the fast lane may stay silent (unsure, not running, bars
  before it started), the pipeline's signal went out instead. Counted, never a failure.
- a journal signal for a bar the pipeline has not reached yet (a live partition is written
  minute by minute): pending, compared by a later run. Counted, never a failure.

Plain Python over journal records and the `signals` rows; the asset (assets/signals.py) runs
it after every write, so it reads only the partition's small JSONL files.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.fastlane import journal
from pipeline.quality.checks import FLOAT_RTOL, CheckOutcome, md_table

if TYPE_CHECKING:
    import polars as pl

CONFIDENCE_ATOL = 1e-9  # confidence is in [0, 1]: an absolute tolerance (issue 14)
PRICE_RTOL = FLOAT_RTOL  # the bar's close, parsed from the same exchange number by both lanes
MAX_LISTED = 20  # differing rows shown in the check's metadata; the counts are always exact

Key = tuple[str, str, str, str, dt.datetime]  # exchange, symbol, personality, timeframe, close
Market = tuple[str, str]  # exchange, symbol
Reached = Mapping[Market, dt.datetime]  # market -> the latest bar close the pipeline read


@dataclass
class Parity:
    """What one comparison found (counts of signals, and the rows behind the failures)."""

    fast: int = 0  # fast-lane signals (the journal's last line per key)
    compared: int = 0  # of those, on bars the pipeline had reached
    agreed: int = 0
    pending: int = 0  # on bars the pipeline had not reached yet: not compared
    not_in_pipeline: int = 0  # reached, but the pipeline has no such signal
    differing: int = 0  # in both, some field differs
    changed_mind: int = 0  # keys journaled twice with different content
    pipeline_only: int = 0  # pipeline signals the fast lane was silent on (allowed)
    problems: list[dict[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.not_in_pipeline or self.differing or self.changed_mind)


def _utc(v: Any) -> dt.datetime:
    t = dt.datetime.fromisoformat(v) if isinstance(v, str) else v
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _key(r: Mapping[str, Any]) -> Key:
    return (r["exchange"], r["symbol"], r["personality"], r["timeframe"], _utc(r["close_time"]))


def _fields(r: Mapping[str, Any]) -> dict[str, Any]:
    """The compared fields in one form (journal records and pipeline rows alike)."""
    return {
        "action": r["action"],
        "confidence": float(r["confidence"]),
        "reasons": [str(x) for x in r["reasons"]],
        "quality": r["quality"],
        "price": float(r["price"]),
        "open_time": _utc(r["open_time"]),
    }


def _same(name: str, a: Any, b: Any) -> bool:
    if name == "confidence":
        return abs(a - b) <= CONFIDENCE_ATOL
    if name == "price":
        return math.isclose(a, b, rel_tol=PRICE_RTOL, abs_tol=0.0)
    return bool(a == b)


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names of the compared fields in which two signals of one key differ."""
    fa, fb = _fields(a), _fields(b)
    return [n for n in fa if not _same(n, fa[n], fb[n])]


def _show(r: Mapping[str, Any] | None, names: Iterable[str]) -> str:
    if r is None:
        return "(none)"
    f = _fields(r)
    shown = {
        n: "; ".join(v) if isinstance(v, list) else v.isoformat() if n == "open_time" else repr(v)
        for n, v in f.items()
    }
    return "; ".join(f"{n}={shown[n]}" for n in names)


def _problem(k: Key, what: str, fast: str, pipeline: str) -> dict[str, str]:
    cells = {
        "market": f"{k[0]}:{k[1]}",
        "personality": k[2],
        "timeframe": k[3],
        "close_time": k[4].isoformat().replace("+00:00", "Z"),
        "problem": what,
        "fast_lane": fast,
        "pipeline": pipeline,
    }
    return {c: v.replace("|", "\\|") for c, v in cells.items()}  # a markdown table cell


def compare(
    fast: Iterable[Mapping[str, Any]],
    pipeline: Iterable[Mapping[str, Any]],
    reached: Reached,
    changed: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]] = (),
) -> Parity:
    """Compare the fast lane's signals (journal records) with the pipeline's rows of the same
    venues and days. `reached`: per (exchange, symbol), the close_time of the latest bar the
    pipeline's run read; a fast signal on a later bar (or a symbol it read nothing of) is
    pending. `changed`: `journal.conflicts` pairs."""
    out = Parity()
    rows = {_key(r): r for r in pipeline}
    matched = 0
    for old, new in changed:
        names = differences(old, new)
        if not names:  # e.g. a confidence 1e-12 apart: within the tolerance, the same signal
            continue
        out.changed_mind += 1
        out.problems.append(
            _problem(
                _key(new),
                "journaled twice, differently: " + ", ".join(names),
                f"first {_show(old, names)}; then {_show(new, names)}",
                _show(rows.get(_key(new)), names),
            )
        )
    for f in fast:
        out.fast += 1
        k = _key(f)
        seen = reached.get((k[0], k[1]))
        if seen is None or k[4] > seen:
            out.pending += 1
            continue
        out.compared += 1
        p = rows.get(k)
        if p is None:
            out.not_in_pipeline += 1
            shown = ("action", "confidence", "reasons")
            out.problems.append(_problem(k, "not in the pipeline", _show(f, shown), "(none)"))
            continue
        matched += 1
        names = differences(f, p)
        if names:
            out.differing += 1
            out.problems.append(
                _problem(k, "differs: " + ", ".join(names), _show(f, names), _show(p, names))
            )
        else:
            out.agreed += 1
    out.pipeline_only = len(rows) - matched
    return out


def reached(
    exchange: str, frames: Mapping[str, pl.DataFrame]
) -> dict[tuple[str, str], dt.datetime]:
    """Per symbol, the close_time of the latest bar among the candle frames a signal build read
    (pipeline.strategy.build.read_frames): how far the pipeline's partition had got."""
    import polars as pl

    out: dict[Market, dt.datetime] = {}
    for frame in frames.values():
        if frame.height:
            for symbol, close in frame.group_by("symbol").agg(pl.col("close_time").max()).rows():
                k, close = (exchange, symbol), _utc(close)
                out[k] = max(out.get(k, close), close)
    return out


def check_partition(
    home: Path,
    venues: Iterable[str],
    days: Iterable[dt.date],
    pipeline: pl.DataFrame,
    where: Reached,
) -> Parity:
    """The fast lane's journal of `venues` x `days` against the pipeline's rows of them.
    Without a journal (the fast lane did not run) nothing is compared: no row is iterated."""
    days = list(days)
    fast: list[dict[str, Any]] = []
    changed: list[tuple[dict, dict]] = []
    for venue in venues:
        for day in days:
            fast += journal.read(home, venue, day)
            changed += journal.conflicts(home, venue, day)
    if not fast and not changed:
        return Parity(pipeline_only=pipeline.height)
    rows = pipeline.select(journal.FIELDS).iter_rows(named=True) if pipeline.height else []
    return compare(fast, rows, where, changed)


def outcome(p: Parity) -> CheckOutcome:
    """The check's verdict: a sentence, the counts, and the first MAX_LISTED problem rows."""
    import polars as pl

    meta: dict[str, Any] = {
        "fast_lane_signals": p.fast,
        "compared": p.compared,
        "agreed": p.agreed,
        "pending": p.pending,
        "not_in_pipeline": p.not_in_pipeline,
        "differing": p.differing,
        "changed_mind": p.changed_mind,
        "pipeline_only": p.pipeline_only,
    }
    quiet = (
        f"{p.pending} pending (bars the pipeline has not reached), fast lane silent on "
        f"{p.pipeline_only} pipeline signal(s)"
    )
    if p.passed:
        if not p.fast:
            return CheckOutcome(True, f"no fast-lane signals to compare ({quiet})", meta)
        return CheckOutcome(
            True, f"all {p.compared} compared fast-lane signal(s) agree with the pipeline; {quiet}",
            meta,
        )  # fmt: skip
    first = p.problems[0]
    meta["differences"] = md_table(pl.DataFrame(p.problems[:MAX_LISTED]))
    return CheckOutcome(
        False,
        f"the fast lane diverges from the pipeline: {p.differing} differing, "
        f"{p.not_in_pipeline} not in the pipeline, {p.changed_mind} journaled twice "
        f"differently (of {p.compared} compared; {quiet}); first: {first['market']} "
        f"{first['personality']} {first['timeframe']} {first['close_time']}: {first['problem']}",
        meta,
    )
