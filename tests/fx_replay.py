"""Fixtures that run the replay exchange on loopback (a free port, seed 7, real sockets)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pipeline.replay import ReplayExchange

SEED = 7


def endpoint_json(replay: ReplayExchange, seed: int = SEED) -> str:
    """The endpoint a home resolves to for this replay exchange (what `resources(endpoint=...)`
    takes), so in-process runs read the replay as a real home would."""
    import json

    from pipeline.exchanges.sources import replay_identity

    ident, label = replay_identity(seed, None)
    return json.dumps(
        {
            "kind": "replay",
            "rest_url": replay.rest_url,
            "ws_url": replay.ws_url,
            "warehouse_id": ident,
            "label": label,
        }
    )


@pytest.fixture
def replay() -> Iterator[ReplayExchange]:
    """A fresh exchange on the wall clock, no faults."""
    from pipeline.replay import ReplayExchange

    with ReplayExchange(seed=SEED) as ex:
        yield ex


@pytest.fixture(scope="session")
def replay_session() -> Iterator[ReplayExchange]:
    """One exchange shared by the session: read-only use (do not change faults or clock)."""
    from pipeline.replay import ReplayExchange

    with ReplayExchange(seed=SEED) as ex:
        yield ex


@pytest.fixture
def replay_factory() -> Iterator[Callable[..., ReplayExchange]]:
    """make(clock_start=..., clock_speed=..., faults=..., data=..., **ReplayExchange kwargs).

    `clock_start` is an ISO string or datetime (UTC); every exchange made is stopped at the end.
    """
    from pipeline.replay import ExchangeClock, ReplayExchange

    made: list[ReplayExchange] = []

    def make(
        *,
        seed: int = SEED,
        clock_start: str | dt.datetime | None = None,
        clock_speed: float = 1.0,
        faults: float = 0.0,
        data: str | Path | None = None,
        **kwargs: Any,
    ) -> ReplayExchange:
        clock = ExchangeClock(clock_start, clock_speed)
        ex = ReplayExchange(seed=seed, data=data, faults=faults, clock=clock, **kwargs).start()
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.stop()
