-- Order flow per closed minute, from the venue's public trades (the taker's side). A row
-- exists only for a minute the trade collector watched from its open to its close: that is
-- the coverage. A minute without a row has no order flow (NULL to every rule, never zero); a
-- covered minute without trades has zero volumes, trade_count 0 and NULL vwap/prices.
-- candle_volume, volume_matches and prices_inside compare the minute with its 1m candle when
-- the day was ingested (NULL: no candle then); a mismatch is flagged here, never corrected.
CREATE TABLE order_flow_1m (
    exchange            VARCHAR     NOT NULL,
    symbol              VARCHAR     NOT NULL,
    open_time           TIMESTAMPTZ NOT NULL,
    close_time          TIMESTAMPTZ NOT NULL,
    taker_buy_volume    DOUBLE      NOT NULL,
    taker_sell_volume   DOUBLE      NOT NULL,
    taker_buy_turnover  DOUBLE      NOT NULL,
    taker_sell_turnover DOUBLE      NOT NULL,
    trade_count         BIGINT      NOT NULL,
    vwap                DOUBLE,
    price_low           DOUBLE,
    price_high          DOUBLE,
    qty_step            DOUBLE,
    candle_volume       DOUBLE,
    volume_matches      BOOLEAN,
    prices_inside       BOOLEAN,
    collected_at        TIMESTAMPTZ NOT NULL,
    ingested_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (exchange, symbol, open_time)
);

-- Order flow on every timeframe (the candles' grid), from the minutes above that matched their
-- candle. A bar has values only when every minute of it is covered (covered_minutes =
-- expected_minutes); otherwise they are NULL. cvd_day: the deltas' sum from 00:00 UTC of the
-- day of the bar's last minute through it, for bars up to 1d (NULL unless all covered).
CREATE TABLE order_flow_bars (
    exchange          VARCHAR     NOT NULL,
    symbol            VARCHAR     NOT NULL,
    timeframe         VARCHAR     NOT NULL,
    open_time         TIMESTAMPTZ NOT NULL,
    close_time        TIMESTAMPTZ NOT NULL,
    covered_minutes   INTEGER     NOT NULL,
    expected_minutes  INTEGER     NOT NULL,
    taker_buy_volume  DOUBLE,
    taker_sell_volume DOUBLE,
    delta             DOUBLE,
    buy_ratio         DOUBLE,
    cvd_day           DOUBLE,
    PRIMARY KEY (exchange, symbol, timeframe, open_time)
);
