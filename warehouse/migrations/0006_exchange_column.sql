-- Two venues side by side: every market table gains `exchange` as the first key column
-- (existing rows were all Bybit's). DuckDB cannot change a primary key in place, so each
-- table is recreated, copied, dropped and renamed; the runner wraps this file in ONE
-- transaction, so a failure leaves the old schema untouched.

-- bybit_klines_1m -> klines_1m
CREATE TABLE klines_1m (
    exchange    VARCHAR     NOT NULL,
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
    PRIMARY KEY (exchange, symbol, open_time)
);
INSERT INTO klines_1m BY NAME SELECT 'bybit' AS exchange, * FROM bybit_klines_1m;
DROP TABLE bybit_klines_1m;
-- Read-only compatibility for users' SQL written against the old table.
CREATE VIEW bybit_klines_1m AS
    SELECT symbol, open_time, close_time, open, high, low, close, volume, turnover, source,
           ingested_at
    FROM klines_1m WHERE exchange = 'bybit';

CREATE TABLE kline_gaps_new (
    exchange   VARCHAR     NOT NULL,
    symbol     VARCHAR     NOT NULL,
    open_time  TIMESTAMPTZ NOT NULL,
    checked_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (exchange, symbol, open_time)
);
INSERT INTO kline_gaps_new BY NAME SELECT 'bybit' AS exchange, * FROM kline_gaps;
DROP TABLE kline_gaps;
ALTER TABLE kline_gaps_new RENAME TO kline_gaps;

CREATE TABLE candles_new (
    exchange    VARCHAR     NOT NULL,
    symbol      VARCHAR     NOT NULL,
    timeframe   VARCHAR     NOT NULL,
    open_time   TIMESTAMPTZ NOT NULL,
    close_time  TIMESTAMPTZ NOT NULL,
    open        DOUBLE      NOT NULL,
    high        DOUBLE      NOT NULL,
    low         DOUBLE      NOT NULL,
    close       DOUBLE      NOT NULL,
    volume      DOUBLE      NOT NULL,
    turnover    DOUBLE,
    n_1m        INTEGER     NOT NULL,
    complete    BOOLEAN     NOT NULL,
    PRIMARY KEY (exchange, symbol, timeframe, open_time)
);
INSERT INTO candles_new BY NAME SELECT 'bybit' AS exchange, * FROM candles;
DROP TABLE candles;
ALTER TABLE candles_new RENAME TO candles;

-- indicators may hold columns the writer added after 0002, so it is copied whole.
CREATE TABLE indicators_new AS SELECT 'bybit'::VARCHAR AS exchange, * FROM indicators;
DROP TABLE indicators;
ALTER TABLE indicators_new RENAME TO indicators;
ALTER TABLE indicators ALTER COLUMN exchange SET NOT NULL;
ALTER TABLE indicators ALTER COLUMN symbol SET NOT NULL;
ALTER TABLE indicators ALTER COLUMN timeframe SET NOT NULL;
ALTER TABLE indicators ALTER COLUMN open_time SET NOT NULL;
ALTER TABLE indicators ALTER COLUMN close_time SET NOT NULL;
ALTER TABLE indicators ADD PRIMARY KEY (exchange, symbol, timeframe, open_time);

CREATE TABLE signals_new (
    exchange    VARCHAR     NOT NULL,
    symbol      VARCHAR     NOT NULL,
    personality VARCHAR     NOT NULL,
    timeframe   VARCHAR     NOT NULL,
    close_time  TIMESTAMPTZ NOT NULL,
    open_time   TIMESTAMPTZ NOT NULL,
    action      VARCHAR     NOT NULL CHECK (action IN ('BUY', 'SELL')),
    confidence  DOUBLE      NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    price       DOUBLE      NOT NULL,
    reasons     VARCHAR[]   NOT NULL,
    snapshot    JSON        NOT NULL,
    quality     VARCHAR     NOT NULL,
    PRIMARY KEY (exchange, symbol, personality, timeframe, close_time)
);
INSERT INTO signals_new BY NAME SELECT 'bybit' AS exchange, * FROM signals;
DROP TABLE signals;
ALTER TABLE signals_new RENAME TO signals;

ALTER TABLE backtest_runs ADD COLUMN exchange VARCHAR DEFAULT 'bybit';
UPDATE backtest_runs SET exchange = 'bybit';
ALTER TABLE backtest_runs ALTER COLUMN exchange SET NOT NULL;

-- The replica replays the log by table name: the old 1m table's entries now name the new one.
UPDATE replica_log SET tbl = 'klines_1m' WHERE tbl = 'bybit_klines_1m';
