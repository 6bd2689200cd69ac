-- How far each venue's order-flow journal of a day is ingested (pipeline/orderflow/journal.py),
-- written in the same transaction as the order_flow_1m rows: a live run reads only the bytes
-- after `bytes`, so a retried or repeated ingest loses nothing and doubles nothing.
-- `bars_from`: the earliest minute ingested whose bars are not rebuilt yet (NULL: none); the
-- live run's order_flow_bars step rebuilds the buckets from there and clears it in the same
-- transaction as the bars.
CREATE TABLE order_flow_ingest (
    exchange    VARCHAR     NOT NULL,
    day         DATE        NOT NULL,
    bytes       BIGINT      NOT NULL,
    bars_from   TIMESTAMPTZ,
    ingested_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (exchange, day)
);
