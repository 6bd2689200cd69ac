"""The fast lane: signals computed from the exchange's live kline stream within milliseconds of a
candle's close, beside the Dagster pipeline (the system of record), with the same code."""
