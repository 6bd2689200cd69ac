-- BUY/SELL signals, stamped with the close_time of the bar they were computed from.
CREATE TABLE signals (
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
    PRIMARY KEY (symbol, personality, timeframe, close_time)
);
