-- Minutes the exchange itself had no candle for, confirmed when a fetch over them came back
-- without them. The completeness check tells these apart from minutes the pipeline missed.
CREATE TABLE kline_gaps (
    symbol     VARCHAR     NOT NULL,
    open_time  TIMESTAMPTZ NOT NULL,
    checked_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (symbol, open_time)
);
