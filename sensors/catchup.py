"""Dagster's side of `up`'s catch-up (pipeline/catchup.py): which days' signals it has recorded.

Read once by `signalbox up` before it starts the daemon; kept apart from the sensors so that
call imports Dagster alone, not the asset modules.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg


def materialized_days(dagster_home: Path, asset: str = "signals") -> set[str]:
    """The daily partitions of `asset` with a recorded materialization in the instance."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return set(instance.get_materialized_partitions(dg.AssetKey(asset)))
