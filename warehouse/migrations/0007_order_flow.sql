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
