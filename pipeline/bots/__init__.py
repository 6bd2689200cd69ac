"""Paper bots: sidecar subscribers that trade signals on paper with the backtest engine's
own fill and risk arithmetic (pipeline/backtest/kernel.py), one journal and state per bot."""
