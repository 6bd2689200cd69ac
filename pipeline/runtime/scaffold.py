"""`signalbox personalities`: the configured and shipped personalities, and a commented
template to start a new one from (`personalities new NAME`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pipeline.config import Settings

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
TEMPLATE = """\
# {name}: a Signalbox personality (format: pipeline/strategy/personality.py; examples: the shipped
# ones in pipeline/personalities/). Check it with `signalbox config check` once it is listed
# under `personalities:` in signalbox.yaml.
name: {name}                  # must equal the file name
description: >
  Trend-following entries on 15-minute bars within the 1h trend. (`signalbox
  personalities` shows up to the first full stop, colon or semicolon; say more after it.)
timeframes: [15m, 1h]         # the first is the one it signals on; the others confirm (as of
                              # that bar). Each must be in the configured `timeframes:`.
threshold: 0.5                # net confluence in (0, 1] a bar needs to signal
cooldown: 1h                  # at most one signal per window of this length (or null)
emit_degraded: false          # signal on incomplete candles (gaps) too?
# regimes:                    # optional weight multipliers by market state; the first that
#   trend: adx_14 >= 25       # holds names the bar's regime
#   flat: true
rules:
  # Conditions use indicator columns (pipeline/indicators.yaml: ema_9, sma_200, rsi_14,
  # macd_hist, bb_upper, ...) and candle values (open, high, low, close, volume); prefix
  # another timeframe's column with it, e.g. 1h.sma_200. Functions: crosses_above,
  # crosses_below, within(cond, n), mean(x, n), ... (pipeline/strategy/rules.py).
  - name: trend_up
    when: close > 1h.sma_200
    direction: long
    gate: true                # a side needs all of its gates to signal
    reason: "price {{close:,.1f}} above the 1h SMA 200 ({{1h.sma_200:,.1f}})"
  - name: trend_down
    when: close < 1h.sma_200
    direction: short
    gate: true
    reason: "price {{close:,.1f}} below the 1h SMA 200 ({{1h.sma_200:,.1f}})"
  - name: ema_cross_up
    when: crosses_above(ema_9, ema_21)
    direction: long
    weight: 2                 # rules' weights are summed per side, then normalised
    reason: "EMA 9 ({{ema_9:,.1f}}) crossed above EMA 21 ({{ema_21:,.1f}})"
  - name: ema_cross_down
    when: crosses_below(ema_9, ema_21)
    direction: short
    weight: 2
    reason: "EMA 9 ({{ema_9:,.1f}}) crossed below EMA 21 ({{ema_21:,.1f}})"
  - name: rsi_oversold
    when: rsi_14 < 30
    direction: long
    weight: 1
    reason: "RSI 14 at {{rsi_14:.0f}} (oversold)"
  - name: rsi_overbought
    when: rsi_14 > 70
    direction: short
    weight: 1
    reason: "RSI 14 at {{rsi_14:.0f}} (overbought)"
  # Market context (README "Market context in rules"): more columns, each what was public at
  # the bar's close, on this timeframe or another (1h.buy_ratio):
  #   buy_ratio     taker buy volume / (buy + sell) of the bar, 0..1 (order_flow_bars)
  #   delta         taker buy - taker sell volume of the bar, in base coin
  #   cvd           the deltas' sum over the 24 h ending at the bar's close; cvd_day: since
  #                 00:00 UTC through the bar
  #   funding_rate  the newest funding rate settled, per the market's funding interval (8 h
  #                 for most Bybit perpetuals, 1, 2 or 4 h for some: 0.0001 = 0.01 %)
  #   oi_change_1h  open interest now / an hour ago - 1
  #   basis_bps     (close - spot close) / spot close x 10 000: the premium over spot
  # Outside coverage they are NULL, never 0: no order flow for the bar (it is collected from
  # when the trade collector started), no funding settled in the last 8 h, an open interest
  # reading missing, no spot candle (or no spot pair: bybit.spot_legs). A NULL condition
  # never holds: a gate blocks its side, a weighted rule does not vote. With `when_unknown:
  # <text>` the rule steps aside instead (a gate lets its side through, a weighted rule
  # abstains) and the signal's reasons carry the text. Reading any of them makes this a
  # pipeline-only personality (the fast lane has no market context). Shipped off below
  # (`enabled: false`: still checked when loaded); set it to true to use it.
  - name: funding_not_expensive
    when: funding_rate < 0.0005
    direction: long
    gate: true
    enabled: false
    when_unknown: "funding filter not applied: no funding rate known"
    reason: "funding {{funding_rate:.4%}} below 0.05 %: longs are not expensive to hold"
  - name: takers_buying
    when: buy_ratio >= 0.55 and basis_bps > 0
    direction: long
    weight: 1
    enabled: false
    when_unknown: "order-flow vote abstained: no order flow or spot price for this bar"
    reason: "takers bought {{buy_ratio:.0%}} of the bar, {{basis_bps:.1f}} bp over spot"
"""


class ScaffoldError(ValueError):
    """The template cannot be written as asked; the message says why and what to do."""


def shipped() -> list[str]:
    from pipeline.strategy.personality import PERSONALITY_DIR

    return sorted(p.stem for p in PERSONALITY_DIR.glob("*.yaml"))


def write_template(name: str, folder: Path) -> Path:
    """Write `<folder>/<name>.yaml` from the template; never overwrites."""
    if not NAME_RE.match(name):
        raise ScaffoldError(
            f"{name[:40]!r} is not a personality name: use lower-case letters, digits and _, "
            "starting with a letter (at most 40), e.g. my_trend"
        )
    if name in shipped():
        raise ScaffoldError(
            f"{name!r} is a shipped personality (shipped: {', '.join(shipped())}); "
            "choose another name"
        )
    if not folder.is_dir():
        raise ScaffoldError(f"{folder} is not a directory; create it or pass another --dir")
    path = folder / f"{name}.yaml"
    try:
        with path.open("x") as out:  # "x": fails if the file exists, however it got there
            out.write(TEMPLATE.format(name=name))
    except FileExistsError:
        raise ScaffoldError(f"{path} already exists; not overwritten (delete it first)") from None
    return path


def new_main(name: str, folder: Path) -> int:
    """`signalbox personalities new NAME`: 0 written, 2 refused."""
    try:
        path = write_template(name, folder)
    except ScaffoldError as err:
        print(f"signalbox personalities: {err}", file=sys.stderr)
        return 2
    where = path.resolve()
    print(f"wrote {where}")
    print(f"edit it, then list it in signalbox.yaml: `personalities: [..., {where}]` (a path,")
    print("absolute or relative to where signalbox runs) and run `signalbox config check`")
    return 0


def summary(description: str) -> str:
    """The first clause of a description: up to its first ':', ';' or '. '."""
    text = " ".join(description.split())
    first = re.split(r"[:;]|\.\s", text, maxsplit=1)[0].rstrip(".")
    return first[:97] + "…" if len(first) > 98 else first


def list_main(settings: Settings) -> int:
    """`signalbox personalities`: configured ones first, then the other shipped ones.
    0, or 2 when a configured one does not load (its line says why)."""
    from pipeline.strategy.personality import PersonalityError, load_personality, personality_path

    names = list(settings.personalities)
    enabled = {personality_path(n).resolve() for n in names}
    others = [n for n in shipped() if personality_path(n).resolve() not in enabled]
    rows: list[tuple[str, str, str, str]] = []
    code = 0
    for name, on in [(n, True) for n in names] + [(n, False) for n in others]:
        path = personality_path(name)
        where = "" if path.parent == personality_path("x").parent else f"  ({path})"
        mark = "on " if on else "off"
        try:
            p = load_personality(path, settings.timeframes)
        except PersonalityError as err:
            code = 2 if on else code
            rows.append((mark, path.stem, "?", f"does not load: {err}"))
            continue
        rows.append((mark, p.name, ",".join(p.timeframes), summary(p.description) + where))
    w_name = max(len(r[1]) for r in rows)
    w_tf = max(len(r[2]) for r in rows)
    for mark, name, tfs, text in rows:
        print(f"{mark} {name:<{w_name}}  {tfs:<{w_tf}}  {text}")
    print("on: listed under `personalities:` in the configuration; `signalbox personalities new "
          "NAME` writes a template")  # fmt: skip
    return code
