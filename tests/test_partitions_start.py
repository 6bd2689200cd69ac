"""The first daily partition: derived from the configured history and recorded once per home,
so the UI shows the days a home holds (not 1,400 "missing" ones) and every Dagster process
of the home builds the same partitions."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT, load_settings
from pipeline.runtime.partitions import ensure_recorded, first_partition, record_path

TODAY = dt.date(2026, 3, 10)


def settings_for(home: Path, **yaml_lines: str):
    cfg = home / "signalbox.yaml"
    cfg.write_text("".join(f"{k}: {v}\n" for k, v in yaml_lines.items()))
    return load_settings(cfg, env={"SIGNALBOX_HOME": str(home)})


def test_derived_once_from_the_history_and_kept_across_restarts(tmp_path):
    s = settings_for(tmp_path, live="{history_days: 7}")
    assert s.start_date is None
    assert first_partition(s, TODAY).origin == "fallback"
    first = ensure_recorded(s, TODAY, 7)
    assert (first.day, first.origin) == (dt.date(2026, 3, 3), "recorded")
    # A restart days later, even with more history asked for, keeps the partition keys.
    later = ensure_recorded(s, TODAY + dt.timedelta(days=40), 30)
    assert later.day == dt.date(2026, 3, 3)
    rec = json.loads(record_path(s).read_text())
    assert rec["start_date"] == "2026-03-03" and "minus 7 day(s)" in rec["derived_from"]


def test_a_first_backfill_further_back_starts_the_partitions_there(tmp_path):
    s = settings_for(tmp_path)
    assert ensure_recorded(s, TODAY, 7, earliest=dt.date(2024, 1, 1)).day == dt.date(2024, 1, 1)
    assert ensure_recorded(s, TODAY, 7, earliest=dt.date(2023, 1, 1)).day == dt.date(2024, 1, 1)


def test_an_explicit_start_date_wins(tmp_path):
    ensure_recorded(settings_for(tmp_path), TODAY, 7)
    s = settings_for(tmp_path, start_date="2025-06-01")
    first = ensure_recorded(s, TODAY, 7)
    assert (first.day, first.origin) == (dt.date(2025, 6, 1), "configured")


def test_a_broken_record_is_named(tmp_path):
    s = settings_for(tmp_path)
    record_path(s).write_text("{not json")
    with pytest.raises(ValueError, match=r"partitions\.json is unreadable.*start_date"):
        first_partition(s)


def _partitions_in_a_process(home: Path) -> tuple[dict, str]:
    """What a Dagster process of this home (webserver, daemon, run) builds."""
    code = (
        "import json; from assets.common import DAILY; "
        "keys = DAILY.get_partition_keys(); print(json.dumps([len(keys), keys[0]]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALBOX_")}
    env["SIGNALBOX_HOME"] = str(home)
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    n, first = json.loads(r.stdout)
    return {"count": n, "first": first}, r.stderr


def test_every_process_of_a_home_builds_the_recorded_partitions(tmp_path):
    """About history_days partitions, not ~1,400 since 2023-01-01; the same in every process;
    without a record the fallback is used and the process says so."""
    home = tmp_path / "home"
    home.mkdir()
    s = load_settings(env={"SIGNALBOX_HOME": str(home)})
    today = dt.datetime.now(dt.UTC).date()

    fallback, said = _partitions_in_a_process(home)
    assert fallback["first"] == str(today - dt.timedelta(days=s.live.history_days))
    assert "daily partitions start" in said and "partitions.json" in said

    ensure_recorded(s, today - dt.timedelta(days=1), s.live.history_days)
    one, said = _partitions_in_a_process(home)
    assert "daily partitions start" not in said
    assert one["first"] == str(first_partition(s).day)
    assert one["first"] == str(today - dt.timedelta(days=1 + s.live.history_days))
    # the recorded day, history_days days up to yesterday and today's live partition
    assert one["count"] == s.live.history_days + 2


def test_backfill_before_the_first_partition_says_how_to_go_further_back(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALBOX_")}
    env.update(SIGNALBOX_HOME=str(home), SIGNALBOX_SOURCE="replay")
    s = load_settings(env=env)
    today = dt.datetime.now(dt.UTC).date()
    first = ensure_recorded(s, today, 7).day
    before = first - dt.timedelta(days=30)
    args = ["backfill", "--start", str(before), "--end", str(first)]
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.runtime.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert f"--start {before} is before the first partition {first}" in r.stderr
    assert "partitions.json" in r.stderr and f"set start_date: {before}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (home / "dagster").exists()  # refused before anything started
