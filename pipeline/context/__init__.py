"""The market-context room (issue 16): funding rates, open interest and the spot 1m candles
beside the perpetual's candles, fetched, written idempotently per UTC day and checked.

Plain Python: the asset (assets/context.py) and the tests call the same functions. The
tables and what `known_at` means are warehouse/migrations/0009_market_context.sql.
"""
