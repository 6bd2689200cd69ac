"""Indicators per symbol and timeframe: the registry and its derived warm-up (`spec`), the
functions TA-Lib lacks (`custom`), which candles count as history (`history`), the computation
(`compute`) and the checks that prove there is no lookahead (`checks`). The set itself lives in
`pipeline/indicators.yaml`."""

from pipeline.indicators.checks import (
    check_indicators,
    check_lookahead,
    check_nulls,
    check_ranges,
    check_warmup,
)
from pipeline.indicators.compute import (
    ID_COLUMNS,
    compute_indicators,
    default_threads,
    indicators_for_partition,
    iter_indicators,
)
from pipeline.indicators.custom import CUSTOM, Context, Custom
from pipeline.indicators.history import mark_history
from pipeline.indicators.spec import (
    RATIO_GAIN,
    SPEC_PATH,
    Indicator,
    IndicatorSpec,
    convergence_bars,
    indicator_input_window,
    load_spec,
    spec_from_dict,
    warmup_bars,
)

__all__ = [
    "CUSTOM",
    "ID_COLUMNS",
    "RATIO_GAIN",
    "SPEC_PATH",
    "Context",
    "Custom",
    "Indicator",
    "IndicatorSpec",
    "check_indicators",
    "check_lookahead",
    "check_nulls",
    "check_ranges",
    "check_warmup",
    "compute_indicators",
    "convergence_bars",
    "default_threads",
    "indicator_input_window",
    "indicators_for_partition",
    "iter_indicators",
    "load_spec",
    "mark_history",
    "spec_from_dict",
    "warmup_bars",
]
