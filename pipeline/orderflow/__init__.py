"""Order flow: public trades aggregated per closed minute (taker buy and sell volume, trade
count, VWAP), the journal the trade collector writes them to, and what the `order_flow_1m`
asset checks them against. Plain Python and polars; no Dagster, no warehouse."""
