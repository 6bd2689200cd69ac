"""What the Dagster UI shows of the definitions: every check says what it proves, every asset
has owners and kinds, and numbers in metadata are rounded for display."""

from __future__ import annotations

import dagster as dg

from assets.common import check_result, display
from pipeline.orchestration.definitions import defs
from pipeline.quality.checks import CheckOutcome, for_display, md_table

NOISY = 0.1 + 0.2  # 0.30000000000000004


def test_every_check_has_a_description_and_every_asset_owners_and_kinds():
    graph = defs.resolve_asset_graph()
    checks = graph.asset_check_keys
    assert len(checks) >= 17  # every layer's blocking checks, the slow ones, the backtest's
    undescribed = [k.to_user_string() for k in checks if not (graph.get(k).description or "")]
    assert undescribed == []
    keys = graph.get_all_asset_keys()
    assert {k.to_user_string() for k in keys} >= {"klines_1m", "signals", "backtest_report"}
    for key in keys:
        node = graph.get(key)
        assert node.owners == ["team:signalbox"], key
        assert node.kinds, key
    assert "talib" in graph.get(dg.AssetKey("indicators")).kinds
    assert "duckdb" in graph.get(dg.AssetKey("klines_1m")).kinds


def test_floats_are_rounded_for_display_everywhere_they_go():
    assert for_display(NOISY) == 0.3
    assert for_display({"a": [NOISY, 1, "x"], "b": (2 / 3,)}) == {
        "a": [0.3, 1, "x"],
        "b": [0.666667],
    }
    assert for_display(float("nan")) != for_display(float("nan"))  # NaN stays NaN
    assert for_display(123456.789) == 123457.0 and for_display(1.5e-7) == 1.5e-7

    outcome = CheckOutcome(True, "fine", {"share": NOISY, "windows": [{"pct": 100 * NOISY}]})
    meta = check_result("c", outcome, "a").metadata
    assert meta["share"].value == 0.3 and meta["windows"].data == [{"pct": 30.0}]

    shown = display(
        {
            "raw": NOISY,
            "json": dg.MetadataValue.json({"x": NOISY}),
            "float": dg.MetadataValue.float(NOISY),
            "text": "0.30000000000000004 stays text",
        }
    )
    assert shown["raw"] == 0.3
    assert shown["json"].data == {"x": 0.3} and shown["float"].value == 0.3
    assert shown["text"] == "0.30000000000000004 stays text"

    import polars as pl

    table = md_table(pl.DataFrame({"v": [NOISY]}))
    assert "| 0.3 |" in table and "0000" not in table
