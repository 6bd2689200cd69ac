-- Raw 1-minute candles as the exchange reported them (times UTC; open_time identifies a candle).
CREATE TABLE bybit_klines_1m (
    symbol      VARCHAR     NOT NULL,
    open_time   TIMESTAMPTZ NOT NULL,
    close_time  TIMESTAMPTZ NOT NULL,
    open        DOUBLE      NOT NULL,
    high        DOUBLE      NOT NULL,
    low         DOUBLE      NOT NULL,
    close       DOUBLE      NOT NULL,
    volume      DOUBLE      NOT NULL,
    turnover    DOUBLE,
    source      VARCHAR     NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (symbol, open_time)
);

-- Internal: every partition replacement, so the read replica can replay what it missed.
CREATE TABLE replica_log (
    seq       BIGINT      PRIMARY KEY,
    tbl       VARCHAR     NOT NULL,
    predicate VARCHAR     NOT NULL,
    params    JSON        NOT NULL,
    logged_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
