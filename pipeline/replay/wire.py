"""Bybit's wire format: numbers as strings without trailing zeros, and the JSON envelopes.

Bodies are assembled from pre-formatted row strings instead of `json.dumps` on nested lists:
a 1000-row page is then a string join, which keeps a page at a few milliseconds server-side.
"""

from __future__ import annotations

import json
import re

import numpy as np

# Decimals of (price, volume, turnover) columns.
Decimals = tuple[int, int, int]

_TRAILING = re.compile(r'(\.\d*?)0+"')


def _row_format(dec: Decimals) -> str:
    p, v, t = dec
    return f'["%d","%.{p}f","%.{p}f","%.{p}f","%.{p}f","%.{v}f","%.{t}f"]'


def _strip(text: str) -> str:
    """Drop trailing zeros after the decimal point (`"26210.0"` -> `"26210"`)."""
    return _TRAILING.sub(r'\1"', text).replace('."', '"')


def format_rows(rows: np.ndarray, dec: Decimals) -> list[str]:
    """Each row (open_time_ms, o, h, l, c, v, t) as Bybit's JSON array of seven strings.

    Values are rounded to their decimals, which gives the nearest double to the decimal, whose
    shortest representation (polars' float-to-string, about twice as fast as Python's
    formatting) is that decimal. Exponent notation, which polars uses for very small or
    large numbers, falls back to fixed-point formatting.
    """
    if len(rows) == 0:
        return []
    import polars as pl

    decs = (dec[0],) * 4 + dec[1:]
    cols: dict[str, np.ndarray] = {"t": rows[:, 0].astype(np.int64)}
    for j, d in enumerate(decs):
        cols[f"c{j}"] = np.round(rows[:, j + 1], d) + 0.0  # + 0.0 turns -0.0 into 0.0
    text = [pl.col("t").cast(pl.String)] + [
        pl.col(f"c{j}").cast(pl.String).str.strip_suffix(".0") for j in range(6)
    ]
    row = pl.concat_str([pl.lit('["'), pl.concat_str(text, separator='","'), pl.lit('"]')])
    out = pl.DataFrame(cols).select(row.alias("row"))["row"]
    if out.str.contains("e", literal=True).any() or out.str.contains("n", literal=True).any():
        return format_rows_fixed(rows, dec)
    return out.to_list()


def format_rows_fixed(rows: np.ndarray, dec: Decimals) -> list[str]:
    """`format_rows` with Python's fixed-point formatting (never exponent notation)."""
    if len(rows) == 0:
        return []
    fmt = _row_format(dec)
    body = "\n".join([fmt % tuple(r) for r in rows.tolist()])
    # -0.0 would print as "-0"; the exchange never sends negative zero.
    return _strip(body).replace('"-0"', '"0"').split("\n")


def format_values(row: np.ndarray, dec: Decimals) -> list[str]:
    """Open, high, low, close, volume, turnover of one row as strings (for WebSocket pushes)."""
    return json.loads(format_rows(np.asarray(row, dtype=np.float64)[None, :], dec)[0])[1:]


def kline_body(symbol: str, category: str, rows: list[str], now_ms: int) -> bytes:
    return (
        f'{{"retCode":0,"retMsg":"OK","result":{{"symbol":"{symbol}","category":"{category}",'
        f'"list":[{",".join(rows)}]}},"retExtInfo":{{}},"time":{now_ms}}}'
    ).encode()


def error_body(code: int, message: str, now_ms: int) -> bytes:
    return json.dumps(
        {"retCode": code, "retMsg": message, "result": {}, "retExtInfo": {}, "time": now_ms},
        separators=(",", ":"),
    ).encode()


def time_body(now_ms: int) -> bytes:
    result = {"timeSecond": str(now_ms // 1000), "timeNano": str(now_ms * 1_000_000)}
    return json.dumps(
        {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now_ms},
        separators=(",", ":"),
    ).encode()
