"""Progress of a backfill as people see it: every long step draws a bar (from the structured
records its run appends), and the lines between them (steps, check results, pool waits) follow
without blank lines, on a terminal or not."""

from __future__ import annotations

import io
from pathlib import Path

from pipeline.runtime.backfill import render
from pipeline.runtime.progress import Follower, Reporter, append

RUN = "5d6e7473-383d-4656-bf6c-edc6dc444aa2"
STEPS = {"klines_1m": "minutes", "candles": "days", "indicators": "timeframes",
         "signals": "personalities"}  # fmt: skip


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _dagster_log(step: str, level: str, event: str) -> str:
    """One line as `dagster job execute` prints it."""
    head = f"2026-12-03 04:01:16 +0000 - dagster - {level} - backfill - {RUN} - "
    return head + (f"2209 - {step} - {event}" if level == "DEBUG" else f"{step} - {event}")


class Run:
    """A run as `signalbox backfill` sees it: Dagster's output, line by line, and the progress
    records the run's steps append (each report before its log line, as `Reporter` does)."""

    def __init__(self, tmp: Path) -> None:
        self.records = tmp / "progress.jsonl"
        self.progress = Follower(self.records)

    def output(self):
        def say(step: str, unit: str):
            def log(text: str) -> str:
                return _dagster_log(step, "INFO", text) + "\n"

            lines: list[str] = []
            rep = Reporter(
                lambda t: lines.append(log(t)), unit, 3, every_s=0, step=step,
                record=lambda rec: append(self.records, rec),
            )  # fmt: skip
            return rep, lines

        for step, unit in STEPS.items():
            yield _dagster_log(step, "DEBUG", f'STEP_START - Started execution of step "{step}".')
            rep, lines = say(step, unit)
            for done in (1, 2, 3):
                rep(done, f"part {done}")
                yield from lines
                lines.clear()
            for check in ("ohlc_sane", "no_duplicates"):
                yield _dagster_log(step, "DEBUG", (
                    f"ASSET_CHECK_EVALUATION - Asset check '{check}' on '{step}' passed. "
                    "Description: 'fine'"))  # fmt: skip
        yield _dagster_log("signals", "INFO", "waiting for the duckdb pool: run 1234 is writing")


def _shown(stream: io.StringIO) -> list[str]:
    """What a terminal ends up showing: each line as its last redraw after a carriage return."""
    return [x.rsplit("\r", 1)[-1].replace("\x1b[K", "") for x in stream.getvalue().split("\n")]


def test_a_terminal_gets_a_bar_per_step_and_no_blank_lines(tmp_path):
    tty = Terminal()
    run = Run(tmp_path)
    failed, _ = render(run.output(), out=tty, progress=run.progress)
    shown = _shown(tty)
    assert not failed
    assert shown[-1] == ""  # the output ends with a newline ...
    assert all(x.strip() for x in shown[:-1]), f"blank line in {shown!r}"  # ... and has no blank
    bars = [x for x in shown if x.startswith("[")]
    assert len(bars) == len(STEPS)  # one bar per step, redrawn in place to its last state
    units = ["candle-minutes", "days", "timeframes", "personalities"]
    for bar, unit in zip(bars, units, strict=True):
        assert "100.0%" in bar and f"3/3 {unit}" in bar and "part 3" in bar
    steps = [x for x in shown if x.startswith("→ ")]
    assert steps == [f"→ {s}" for s in STEPS]
    # each bar sits between its step's name and its check results
    assert shown.index("→ candles") < shown.index(bars[1]) < shown.index("→ indicators")
    assert sum("check: " in x for x in shown) == 2 * len(STEPS)
    assert shown[-2] == "  waiting for the duckdb pool: run 1234 is writing"


def test_a_pipe_gets_every_progress_line_and_no_blank_lines(tmp_path):
    pipe = io.StringIO()
    run = Run(tmp_path)
    render(run.output(), out=pipe, progress=run.progress)
    text = pipe.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.split("\n")
    assert lines[-1] == "" and all(x.strip() for x in lines[:-1])
    assert sum(x.startswith("[") for x in lines) == 3 * len(STEPS)


def test_reporter_throttles_but_always_says_the_last_unit():
    said: list[str] = []
    report = Reporter(said.append, "days", 5, every_s=3600)
    for i in range(1, 6):
        report(i, f"day {i}")
    assert said == ["progress 5/5 days (100%) day 5"]
    said.clear()
    Reporter(said.append, "days", 2, every_s=0)(1)
    assert said == ["progress 1/2 days (50%)"]
    said.clear()
    records: list[dict] = []
    Reporter(said.append, "days", 2, every_s=0, step="candles", record=records.append)(2, "x")
    assert records == [{"step": "candles", "done": 2, "total": 2, "unit": "days", "note": "x"}]
    assert said == ["progress 2/2 days (100%) x"]
    said.clear()
    quiet = Reporter(said.append, "days", 1, enabled=False)
    quiet(1)
    assert said == []


def test_progress_records_are_read_once_and_a_partial_line_waits(tmp_path):
    path = tmp_path / "progress.jsonl"
    follow = Follower(path)
    assert follow() == []  # no file yet: the run has not reported
    append(path, {"done": 1})
    with path.open("a") as f:
        f.write('{"done": 2')  # a record being written
    assert follow() == [{"done": 1}]
    with path.open("a") as f:
        f.write("}\n")
    assert follow() == [{"done": 2}] and follow() == []
