"""The compiled inner loop: one pass over 1m bars, one position at a time.

Imported only when a backtest runs (numba takes ~0.5 s to import), never by the Dagster code
location at load time. Inputs are plain arrays so a sweep re-runs it without any conversion;
parameters travel as two small arrays (floats, ints) to keep the signature stable and the
compiled code cached on disk (`cache=True`) across processes.

The per-bar arithmetic is `step`, over a small state vector (`S_*`): `simulate` loops it over
a window, and the paper bots (pipeline/bots) call it once per live 1m bar, so a bot fills and
exits exactly as a backtest does (one implementation, not two).

Semantics are documented in `params.py`. Per bar: (1) a signal due at this bar's open closes
and/or opens a position at the open; (2) the open position's stop, target, trailing stop and
liquidation are checked against the bar's low/high (the stop wins if both are touched);
(3) equity is marked at the close; (4) the trailing stop and the breakeven move are updated
from the bar's extreme, to apply from the next bar on.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Exit reason codes (names in result.EXIT_REASONS, same order).
SIGNAL, STOP, TARGET, TRAIL, BREAKEVEN, LIQUIDATION, END = 0, 1, 2, 3, 4, 5, 6

# Float parameters, in this order.
F_CASH, F_TAKER, F_MAKER, F_SLIP, F_RISK, F_CAP, F_UNITS, F_LEV, F_MMR = range(9)
F_STOP_PCT, F_STOP_ATR, F_TP_PCT, F_TP_ATR, F_TP_R, F_TRAIL_PCT, F_TRAIL_ATR, F_BE_R = range(9, 17)
N_F = 17
# Int parameters.
I_SIZING, I_LONG, I_SHORT, I_OPPOSITE, I_TP_LIMIT, I_CLOSE_END = range(6)
N_I = 6
SIZING_RISK, SIZING_FRACTION, SIZING_UNITS = 0, 1, 2
OPP_REVERSE, OPP_CLOSE, OPP_IGNORE = 0, 1, 2

# Trade record columns.
(
    T_SIDE,
    T_ENTRY_I,
    T_EXIT_I,
    T_ENTRY_PX,
    T_EXIT_PX,
    T_SIZE,
    T_FEES,
    T_SLIP,
    T_PNL,
    T_REASON,
    T_CONF,
    T_BOTH,
    T_SIG,
    T_STOP0,
    T_TARGET,
) = range(15)
N_T = 15

# Counters.
C_BOTH, C_OPENED, C_SAME_DIR, C_NOT_ALLOWED, C_NO_ATR, C_NO_SIZE, C_CLIPPED, C_BANKRUPT = range(8)
C_IGNORED_OPP, C_OPEN_AT_END = 8, 9
N_C = 10


@njit(cache=True, inline="always")
def fill_price(op, d, slip):
    """A market order's fill at the open `op` in direction d (+1 buy, -1 sell): slippage
    against us."""
    return op * (1.0 + d * slip)


@njit(cache=True, inline="always")
def taker_fee(size, px, rate):
    """The fee on a fill of `size` at `px`."""
    return size * px * rate


@njit(cache=True, inline="always")
def _exit(r, i, px, ref_px, fee_rate, pos, size, entry_px, entry_fee, slip_cost, why):
    """Close the open trade record `r` at bar i and price px (ref_px: before slippage);
    returns the cash it brings back (gross P&L less the exit fee)."""
    fee = taker_fee(size, px, fee_rate)
    gross = pos * size * (px - entry_px)
    r[T_EXIT_I] = i
    r[T_EXIT_PX] = px
    r[T_FEES] = entry_fee + fee
    r[T_SLIP] = slip_cost + size * abs(px - ref_px)
    r[T_PNL] = gross - entry_fee - fee
    r[T_REASON] = why
    return gross - fee


# Position state carried from bar to bar (`new_state`, `step`): one float vector.
(
    S_CASH,
    S_POS,
    S_SIZE,
    S_ENTRY,
    S_ENTRY_FEE,
    S_SLIP_COST,
    S_STOP,
    S_STOP_WHY,
    S_DIST0,
    S_TARGET,
    S_TRAIL_DIST,
    S_TRAIL,
    S_LIQ,
    S_BEST,
    S_BE_DONE,
    S_CONF,
    S_REF,
    S_BANKRUPT,
    S_NT,
) = range(19)
N_S = 19


@njit(cache=True)
def new_state(cash):
    """A flat account holding `cash`."""
    st = np.zeros(N_S)
    st[S_CASH] = cash
    st[S_STOP] = np.nan
    st[S_STOP_WHY] = STOP
    st[S_DIST0] = np.nan
    st[S_TARGET] = np.nan
    st[S_TRAIL_DIST] = np.nan
    st[S_TRAIL] = np.nan
    st[S_LIQ] = np.nan
    st[S_REF] = -1.0
    return st


@njit(cache=True)
def run(st, o, h, lo, c, sig_dir, sig_conf, sig_atr, sig_ref, fp, ip, trades, counters, equity):
    """Carry the position state `st` over the bars o/h/lo/c (indexes 0..n-1): per bar, the
    signal sig_dir[i] (+1/-1/0) due at its open, exits inside it, the mark at its close
    (equity[i]), the trailing stop and breakeven for the next bar. Closed trades are written
    to trades[st[S_NT]] onwards; the open trade's record is the row at st[S_NT]. A backtest
    runs it over its whole window; a paper bot over one live bar at a time."""
    cash = st[S_CASH]
    taker, maker, slip = fp[F_TAKER], fp[F_MAKER], fp[F_SLIP]
    lev, mmr = fp[F_LEV], fp[F_MMR]
    sizing = ip[I_SIZING]
    opposite = ip[I_OPPOSITE]
    tp_limit = ip[I_TP_LIMIT] == 1
    pos = int(st[S_POS])
    size = st[S_SIZE]
    entry_px = st[S_ENTRY]
    entry_fee = st[S_ENTRY_FEE]
    slip_cost = st[S_SLIP_COST]
    stop = st[S_STOP]
    stop_reason = int(st[S_STOP_WHY])
    dist0 = st[S_DIST0]
    target = st[S_TARGET]
    trail_dist = st[S_TRAIL_DIST]
    trail = st[S_TRAIL]
    liq = st[S_LIQ]
    best = st[S_BEST]
    be_done = st[S_BE_DONE] != 0.0
    conf = st[S_CONF]
    ref = int(st[S_REF])
    bankrupt = st[S_BANKRUPT] != 0.0
    nt = int(st[S_NT])

    for i in range(o.shape[0]):
        op, hi, lo_i, cl = o[i], h[i], lo[i], c[i]
        d = sig_dir[i]
        atr = sig_atr[i]
        # 1. a signal due at this open
        if d != 0 and not bankrupt:
            if pos != 0 and d == pos:
                counters[C_SAME_DIR] += 1
                d = 0
            elif pos != 0:
                if opposite == OPP_IGNORE:
                    counters[C_IGNORED_OPP] += 1
                    d = 0
                else:
                    fill = fill_price(op, -pos, slip)
                    cash += _exit(trades[nt], i, fill, op, taker, pos, size, entry_px, entry_fee,
                                  slip_cost, SIGNAL)  # fmt: skip
                    nt += 1
                    pos = 0
                    if opposite == OPP_CLOSE:
                        d = 0
            if (d == 1 and ip[I_LONG] == 0) or (d == -1 and ip[I_SHORT] == 0):
                counters[C_NOT_ALLOWED] += 1
                d = 0
            if d != 0:
                fill = fill_price(op, d, slip)
                need_atr = (
                    not np.isnan(fp[F_STOP_ATR])
                    or not np.isnan(fp[F_TP_ATR])
                    or not np.isnan(fp[F_TRAIL_ATR])
                )
                if need_atr and not (atr > 0.0):
                    counters[C_NO_ATR] += 1
                else:
                    dist = np.nan
                    if not np.isnan(fp[F_STOP_PCT]):
                        dist = fp[F_STOP_PCT] * fill
                    elif not np.isnan(fp[F_STOP_ATR]):
                        dist = fp[F_STOP_ATR] * atr
                    eq = cash
                    cap_size = fp[F_CAP] * eq * lev / fill
                    if sizing == SIZING_UNITS:
                        qty = fp[F_UNITS]
                        most = eq * lev / (fill * (1.0 + taker))
                        if qty > most:
                            qty = most
                            counters[C_CLIPPED] += 1
                    elif sizing == SIZING_RISK and not np.isnan(dist):
                        qty = fp[F_RISK] * eq / dist
                        if qty > cap_size:
                            qty = cap_size
                    else:
                        qty = cap_size
                    if not (qty > 0.0) or eq <= 0.0:
                        counters[C_NO_SIZE] += 1
                    else:
                        pos = d
                        size = qty
                        entry_px = fill
                        entry_fee = taker_fee(size, fill, taker)
                        cash -= entry_fee
                        slip_cost = size * abs(fill - op)
                        dist0 = dist
                        stop = fill - d * dist if not np.isnan(dist) else np.nan
                        stop_reason = STOP
                        target = np.nan
                        if not np.isnan(fp[F_TP_PCT]):
                            target = fill * (1.0 + d * fp[F_TP_PCT])
                        elif not np.isnan(fp[F_TP_ATR]):
                            target = fill + d * fp[F_TP_ATR] * atr
                        elif not np.isnan(fp[F_TP_R]):
                            target = fill + d * fp[F_TP_R] * dist
                        trail_dist = np.nan
                        if not np.isnan(fp[F_TRAIL_ATR]):
                            trail_dist = fp[F_TRAIL_ATR] * atr
                        best = fill
                        trail = np.nan
                        if not np.isnan(fp[F_TRAIL_PCT]):
                            trail = best * (1.0 - d * fp[F_TRAIL_PCT])
                        elif not np.isnan(trail_dist):
                            trail = best - d * trail_dist
                        liq = fill * (1.0 - d * (1.0 / lev - mmr))
                        be_done = False
                        conf = sig_conf[i]
                        ref = sig_ref[i]
                        counters[C_OPENED] += 1
                        r = trades[nt]
                        r[T_SIDE] = d
                        r[T_ENTRY_I] = i
                        r[T_ENTRY_PX] = fill
                        r[T_SIZE] = size
                        r[T_CONF] = conf
                        r[T_BOTH] = 0.0
                        r[T_SIG] = ref
                        r[T_STOP0] = stop
                        r[T_TARGET] = target

        # 2. exits inside the bar
        if pos != 0:
            # the binding protective level: the tightest of stop, trailing stop, liquidation
            lvl = liq
            why = LIQUIDATION
            if not np.isnan(stop) and pos * (stop - lvl) >= 0.0:
                lvl = stop
                why = stop_reason
            if not np.isnan(trail) and pos * (trail - lvl) > 0.0:
                lvl = trail
                why = TRAIL
            if pos == 1:
                stop_hit = lo_i <= lvl
                tp_hit = (not np.isnan(target)) and hi >= target
            else:
                stop_hit = hi >= lvl
                tp_hit = (not np.isnan(target)) and lo_i <= target
            exit_px = np.nan
            fee_rate = taker
            ref_px = 0.0
            if stop_hit:
                if tp_hit:
                    counters[C_BOTH] += 1
                    trades[nt, T_BOTH] = 1.0
                if why == LIQUIDATION:
                    exit_px = lvl
                    ref_px = lvl
                else:
                    ref_px = min(op, lvl) if pos == 1 else max(op, lvl)
                    exit_px = ref_px * (1.0 - pos * slip)
            elif tp_hit:
                why = TARGET
                ref_px = max(op, target) if pos == 1 else min(op, target)
                if tp_limit:
                    exit_px = ref_px
                    fee_rate = maker
                else:
                    exit_px = ref_px * (1.0 - pos * slip)
            if not np.isnan(exit_px):
                cash += _exit(trades[nt], i, exit_px, ref_px, fee_rate, pos, size, entry_px,
                              entry_fee, slip_cost, why)  # fmt: skip
                nt += 1
                pos = 0

        # 3. mark to market at the close
        eq = cash + pos * size * (cl - entry_px) if pos != 0 else cash
        if eq <= 0.0 and not bankrupt:
            if pos != 0:  # no exit fee or slippage: the exchange takes what is left
                _exit(trades[nt], i, cl, cl, 0.0, pos, size, entry_px, entry_fee, slip_cost,
                      LIQUIDATION)  # fmt: skip
                nt += 1
                pos = 0
            bankrupt = True
            counters[C_BANKRUPT] = 1
            cash = 0.0
        if bankrupt:
            eq = 0.0
        equity[i] = eq

        # 4. tighten trailing stop / breakeven for the next bar
        if pos != 0:
            ext = hi if pos == 1 else lo_i
            if pos * (ext - best) > 0.0:
                best = ext
                if not np.isnan(fp[F_TRAIL_PCT]):
                    trail = best * (1.0 - pos * fp[F_TRAIL_PCT])
                elif not np.isnan(trail_dist):
                    trail = best - pos * trail_dist
            if (
                not be_done
                and not np.isnan(fp[F_BE_R])
                and not np.isnan(dist0)
                and pos * (best - entry_px) >= fp[F_BE_R] * dist0
            ):
                be_done = True
                if np.isnan(stop) or pos * (entry_px - stop) > 0.0:
                    stop = entry_px
                    stop_reason = BREAKEVEN

    st[S_CASH] = cash
    st[S_POS] = pos
    st[S_SIZE] = size
    st[S_ENTRY] = entry_px
    st[S_ENTRY_FEE] = entry_fee
    st[S_SLIP_COST] = slip_cost
    st[S_STOP] = stop
    st[S_STOP_WHY] = stop_reason
    st[S_DIST0] = dist0
    st[S_TARGET] = target
    st[S_TRAIL_DIST] = trail_dist
    st[S_TRAIL] = trail
    st[S_LIQ] = liq
    st[S_BEST] = best
    st[S_BE_DONE] = 1.0 if be_done else 0.0
    st[S_CONF] = conf
    st[S_REF] = ref
    st[S_BANKRUPT] = 1.0 if bankrupt else 0.0
    st[S_NT] = nt


@njit(cache=True)
def close_end(st, i, last, fp, trades):
    """Close what is still open at the window's last close `last` (bar i); returns the cash."""
    pos = int(st[S_POS])
    nt = int(st[S_NT])
    if pos != 0:
        fill = last * (1.0 - pos * fp[F_SLIP])
        st[S_CASH] += _exit(trades[nt], i, fill, last, fp[F_TAKER], pos, st[S_SIZE],
                            st[S_ENTRY], st[S_ENTRY_FEE], st[S_SLIP_COST], END)  # fmt: skip
        st[S_NT] = nt + 1
        st[S_POS] = 0
    return st[S_CASH]


@njit(cache=True)
def simulate(o, h, lo, c, sig_dir, sig_conf, sig_atr, sig_ref, fp, ip):
    """Run the position state machine; returns (equity per bar, trades, n_trades, counters)."""
    n = o.shape[0]
    equity = np.empty(n)
    n_sig = 0
    for i in range(n):
        if sig_dir[i] != 0:
            n_sig += 1
    trades = np.empty((n_sig + 1, N_T))
    counters = np.zeros(N_C, dtype=np.int64)
    st = new_state(fp[F_CASH])
    run(st, o, h, lo, c, sig_dir, sig_conf, sig_atr, sig_ref, fp, ip, trades, counters, equity)
    # 5. close what is still open at the last close
    if st[S_POS] != 0 and ip[I_CLOSE_END] == 1 and n > 0:
        equity[n - 1] = close_end(st, n - 1, c[n - 1], fp, trades)
    if st[S_POS] != 0:
        counters[C_OPEN_AT_END] = 1
    return equity, trades, int(st[S_NT]), counters
