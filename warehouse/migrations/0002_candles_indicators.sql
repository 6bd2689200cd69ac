-- Every timeframe built from bybit_klines_1m on the epoch-anchored grid (weeks from Monday,
-- calendar months). Only closed buckets are stored; `complete` = all expected 1m candles present.
CREATE TABLE candles (
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
    PRIMARY KEY (symbol, timeframe, open_time)
);

-- One column per configured indicator; NULL while an indicator still lacks warm-up history.
-- Indicators added in configuration later are added as DOUBLE columns by the writer.
CREATE TABLE indicators (
    symbol       VARCHAR     NOT NULL,
    timeframe    VARCHAR     NOT NULL,
    open_time    TIMESTAMPTZ NOT NULL,
    close_time   TIMESTAMPTZ NOT NULL,
    ema_9        DOUBLE,
    ema_21       DOUBLE,
    ema_50       DOUBLE,
    ema_200      DOUBLE,
    sma_44       DOUBLE,
    sma_50       DOUBLE,
    sma_125      DOUBLE,
    sma_200      DOUBLE,
    rsi_14       DOUBLE,
    macd         DOUBLE,
    macd_signal  DOUBLE,
    macd_hist    DOUBLE,
    bb_upper     DOUBLE,
    bb_middle    DOUBLE,
    bb_lower     DOUBLE,
    bb_width     DOUBLE,
    bb_squeeze   BOOLEAN,
    stoch_k      DOUBLE,
    stoch_d      DOUBLE,
    atr_14       DOUBLE,
    adx_14       DOUBLE,
    obv          DOUBLE,
    vwap         DOUBLE,
    volume_ma_20 DOUBLE,
    volume_ratio DOUBLE,
    PRIMARY KEY (symbol, timeframe, open_time)
);
