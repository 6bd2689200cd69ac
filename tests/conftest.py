"""Shared fixtures. Fixture modules per area are listed in `pytest_plugins`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

pytest_plugins = ["tests.fx_replay", "tests.fx_sidecar", "tests.fx_postgres"]

# The synthetic market every test shares (pipeline.replay.synthetic, seed 7).
SEED = 7
DAY0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SIGNALBOX_HOME for this test; nothing touches the user's state."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SIGNALBOX_HOME", str(h))
    return h
