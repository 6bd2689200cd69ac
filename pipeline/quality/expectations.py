"""Great-expectations suites over warehouse tables.

great_expectations takes ~5 s to import, so these run on a daily cadence as non-blocking
checks, never inside the minute-by-minute live run. The cheap blocking checks live in
pipeline/quality/checks.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.quality.checks import CheckOutcome

if TYPE_CHECKING:
    import polars as pl


def _kline_expectations() -> list[Any]:
    import great_expectations.expectations as gxe

    from pipeline.markets import VENUES

    prices = ["open", "high", "low", "close"]
    out: list[Any] = [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in [*prices, "volume"]]
    out += [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True) for c in prices
    ]
    out += [
        gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="low", or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="high", column_B="open", or_equal=True
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="high", column_B="close", or_equal=True
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="open", column_B="low", or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="close", column_B="low", or_equal=True
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["exchange", "symbol", "open_time"]),
        gxe.ExpectColumnValuesToBeInSet(column="exchange", value_set=list(VENUES)),
        # Bybit symbols (BTCUSDT) and Hyperliquid coins (BTC, kPEPE: 1000x)
        gxe.ExpectColumnValuesToMatchRegex(column="symbol", regex=r"^k?[A-Z0-9]{1,30}$"),
    ]
    return out


def validate_klines(frame: pl.DataFrame, name: str = "klines_1m") -> CheckOutcome:
    """Run the kline suite over `frame`; the outcome lists every expectation's result."""
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    batch = (
        ctx.data_sources.add_pandas("warehouse")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("window")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=_kline_expectations()))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name=name))
    res = vd.run(batch_parameters={"dataframe": frame.to_pandas()})
    rows = []
    for r in res.results:
        cfg = r.expectation_config
        target = (
            cfg.kwargs.get("column")
            or cfg.kwargs.get("column_list")
            or (f"{cfg.kwargs.get('column_A')} >= {cfg.kwargs.get('column_B')}")
        )
        rows.append(
            {
                "expectation": cfg.type,
                "target": str(target),
                "success": bool(r.success),
                "unexpected": int(r.result.get("unexpected_count") or 0),
            }
        )
    stats = res.statistics
    failed = [f"{r['expectation']}({r['target']})" for r in rows if not r["success"]]
    desc = (
        f"{stats['successful_expectations']}/{stats['evaluated_expectations']} expectations met "
        f"on {frame.height} rows" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return CheckOutcome(bool(res.success), desc, {"expectations": rows, "rows": frame.height})
