-- The rolling CVD beside the day-anchored one (issue 16): cvd_24h at a bar is the deltas' sum
-- over the 1,440 minutes ending at its close, NULL unless every one of them is covered (its
-- warm-up: a day of order flow). Bars written before this column exist keep NULL until their
-- partition is rebuilt.
ALTER TABLE order_flow_bars ADD COLUMN cvd_24h DOUBLE;
