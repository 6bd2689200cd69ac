"""The replay exchange prints numbers the way Bybit does, however they are formatted."""

from __future__ import annotations

import numpy as np

from pipeline.replay import synthetic
from pipeline.replay.wire import format_rows, format_rows_fixed, format_values


def test_fast_and_fixed_formatting_agree_on_a_day_of_candles():
    for symbol in ("BTCUSDT", "XRPUSDT", "PEPEUSDT"):
        a = synthetic.candles(symbol, 1704067200000, 1704153600000)
        dec = (synthetic.price_decimals(symbol), 3, 4)
        assert format_rows(a, dec) == format_rows_fixed(a, dec)


def test_trailing_zeros_negative_zero_and_tiny_or_huge_numbers():
    rows = np.array(
        [
            [60_000, 26210.0, 26527.2, 26125.80000000001, 26268.2, 0.0, -0.0],
            [0, 1e-7, 2e-7, 1e-7, 1e-7, 1e16, 123456789.5],
        ]
    )
    assert format_rows(rows, (1, 3, 4))[0] == (
        '["60000","26210","26527.2","26125.8","26268.2","0","0"]'
    )
    tiny = format_rows(rows[1:], (8, 3, 4))[0]
    assert (
        tiny == '["0","0.0000001","0.0000002","0.0000001","0.0000001","10000000000000000",'
        '"123456789.5"]'
    )
    assert format_values(rows[0], (1, 3, 4)) == ["26210", "26527.2", "26125.8", "26268.2", "0", "0"]
