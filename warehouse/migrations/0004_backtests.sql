-- Backtest reports: one row per run, one row per trade.
CREATE TABLE backtest_runs (
    run_id      VARCHAR     PRIMARY KEY,
    personality VARCHAR     NOT NULL,
    symbol      VARCHAR     NOT NULL,
    timeframe   VARCHAR     NOT NULL,
    start       TIMESTAMPTZ NOT NULL,
    "end"       TIMESTAMPTZ NOT NULL,
    params      JSON        NOT NULL,
    metrics     JSON        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE backtest_trades (
    run_id      VARCHAR     NOT NULL,
    trade_no    INTEGER     NOT NULL,
    side        VARCHAR     NOT NULL CHECK (side IN ('LONG', 'SHORT')),
    entry_time  TIMESTAMPTZ NOT NULL,
    entry_price DOUBLE      NOT NULL,
    exit_time   TIMESTAMPTZ NOT NULL,
    exit_price  DOUBLE      NOT NULL,
    size        DOUBLE      NOT NULL,
    fees        DOUBLE      NOT NULL,
    pnl         DOUBLE      NOT NULL,
    exit_reason VARCHAR     NOT NULL,
    PRIMARY KEY (run_id, trade_no)
);
