-- Paper bots (pipeline/bots): what each bot journaled, ingested by the `paper_trades` asset.
-- paper_trades: one row per journal event but the equity marks (orders as recorded when the
-- signal arrived, skips with their reason, fills, exits, the emergency-stop halt), keyed by
-- the bot's own journal numbering `n`, so an ingest retried after a failure replaces what it
-- wrote and never doubles it.
CREATE TABLE paper_trades (
    bot         VARCHAR     NOT NULL,
    n           BIGINT      NOT NULL,
    kind        VARCHAR     NOT NULL CHECK (kind IN ('order', 'skip', 'fill', 'exit', 'halt')),
    exchange    VARCHAR     NOT NULL,
    symbol      VARCHAR     NOT NULL,
    seq         BIGINT,                  -- the signal's seq on the sidecar
    time        TIMESTAMPTZ NOT NULL,    -- signal close_time (order) or fill/exit bar open_time
    action      VARCHAR,
    side        VARCHAR,
    price       DOUBLE,
    size        DOUBLE,
    fees        DOUBLE,
    pnl         DOUBLE,
    reason      VARCHAR,
    entry_time  TIMESTAMPTZ,
    entry_price DOUBLE,
    confidence  DOUBLE,
    timeframe   VARCHAR,
    received_at TIMESTAMPTZ,             -- when the bot read the signal line
    PRIMARY KEY (bot, n)
);

-- Each bot's equity at every 1m close it processed.
CREATE TABLE paper_equity (
    bot    VARCHAR     NOT NULL,
    n      BIGINT      NOT NULL,
    time   TIMESTAMPTZ NOT NULL,
    equity DOUBLE      NOT NULL,
    cash   DOUBLE      NOT NULL,
    PRIMARY KEY (bot, n)
);

-- How far each bot's journal is ingested (bytes and entries), written in the same
-- transaction as the rows.
CREATE TABLE paper_ingest (
    bot         VARCHAR     PRIMARY KEY,
    bytes       BIGINT      NOT NULL,
    n           BIGINT      NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL
);
