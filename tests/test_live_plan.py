"""The live path's planning rules (pure): chunks, day boundaries, run keys."""

from __future__ import annotations

import datetime as dt
import itertools

from pipeline.exchanges.live import MINUTE, Chunk, behind, describe, plan

T = dt.datetime(2024, 2, 28, 23, 50, tzinfo=dt.UTC)


def test_one_new_minute_is_one_chunk():
    (c,) = plan(newest_closed=T, resume_from=T)
    assert (c.start, c.end, c.minutes, c.partition) == (T, T + MINUTE, 1, "2024-02-28")


def test_up_to_date_plans_nothing():
    assert plan(newest_closed=T, resume_from=T + MINUTE) == []


def test_catch_up_splits_at_midnight_and_is_bounded():
    newest = T + dt.timedelta(days=3)
    chunks = plan(newest, T, chunk_minutes=1440, max_chunks=3)
    assert [c.partition for c in chunks] == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert chunks[0].minutes == 10 and chunks[1].minutes == 1440
    for a, b in itertools.pairwise(chunks):
        assert a.end == b.start  # contiguous: nothing skipped, nothing twice
    assert chunks[-1].end < newest + MINUTE  # bounded: the rest comes on the next tick
    again = plan(newest, chunks[-1].end, chunk_minutes=1440, max_chunks=3)
    assert [c.partition for c in again] == ["2024-03-02"]
    assert again[0].start == chunks[-1].end and again[-1].end == newest + MINUTE


def test_chunk_size_and_run_keys():
    chunks = plan(T + dt.timedelta(minutes=9), T, chunk_minutes=4)
    assert [c.minutes for c in chunks] == [4, 4, 2]
    assert chunks[0].run_key() != chunks[0].run_key(1) != chunks[1].run_key()
    assert Chunk(T, T + MINUTE).run_key() == Chunk(T, T + MINUTE).run_key()


def test_lag_wording():
    assert describe(behind(T + dt.timedelta(days=1, hours=2), T)) == "1d 2h 1m"
    assert describe(behind(T, T + MINUTE)) == "0m"
