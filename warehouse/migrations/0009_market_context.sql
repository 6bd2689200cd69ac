-- Market context beside the candles (issue 16): funding, open interest and the spot candles of
-- the same base asset. Every row carries `known_at`, the first instant the value was public;
-- rules join a value to a bar only when known_at <= the bar's close_time (no lookahead).

-- Funding rate history (/v5/market/funding/history): the rate settled at funding_time, on the
-- venue's 8-hour grid (00:00, 08:00, 16:00 UTC for Bybit's USDT perpetuals); known_at =
-- funding_time. A timestamp off the grid is stored and flagged by the asset's blocking check.
CREATE TABLE funding_rates (
    exchange     VARCHAR     NOT NULL,
    symbol       VARCHAR     NOT NULL,
    funding_time TIMESTAMPTZ NOT NULL,
    funding_rate DOUBLE      NOT NULL,
    known_at     TIMESTAMPTZ NOT NULL,
    ingested_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (exchange, symbol, funding_time)
);

-- Open interest (/v5/market/open-interest, intervalTime=5min), in contracts of the base asset.
-- `time` is the venue's timestamp of the reading; known_at = time + 5 minutes, the end of the
-- interval it stands for, so a rule never sees a reading before its interval is over.
CREATE TABLE open_interest_5m (
    exchange      VARCHAR     NOT NULL,
    symbol        VARCHAR     NOT NULL,
    time          TIMESTAMPTZ NOT NULL,
    open_interest DOUBLE      NOT NULL,
    known_at      TIMESTAMPTZ NOT NULL,
    ingested_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (exchange, symbol, time)
);

-- Spot 1m candles (category=spot) of the perpetual's base asset, keyed by the perpetual's
-- symbol (BTCUSDT spot for the BTCUSDT perpetual): the spot leg of the spot-perp basis.
-- Same columns as klines_1m; known_at is close_time.
CREATE TABLE spot_klines_1m (
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
