"""One place for configuration: `signalbox.yaml` plus a few environment overrides.

Loading validates everything up front so a typo fails at start-up with the key, the bad value
and what is allowed, instead of minutes later inside a Dagster run.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError, field_validator

from pipeline.bots.config import BotConfig
from pipeline.instance_storage import DagsterStorage, mask_url
from pipeline.markets import (
    ALL,
    Market,
    Symbols,
    check_exchanges,
    normalize_all,
    parse_markets,
    universe_symbols,
)
from pipeline.sections import (  # noqa: F401 (re-exported: the sections live there)
    REPLAY_SYMBOLS,
    BacktestConfig,
    BybitConfig,
    HyperliquidConfig,
    LiveConfig,
    ReplayConfig,
    SidecarConfig,
    UiConfig,
    _Section,
    _VenueConfig,
)
from pipeline.yamlfile import YamlFileError, key_path, load_yaml, quote

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "signalbox.yaml"
DEFAULT_EXCHANGES = {"bybit": ["BTCUSDT"]}

ENV_CONFIG = "SIGNALBOX_CONFIG"
ENV_HOME = "SIGNALBOX_HOME"
ENV_BYBIT_URL = "SIGNALBOX_BYBIT_URL"  # every venue has SIGNALBOX_<VENUE>_URL and _WS
ENV_BYBIT_WS = "SIGNALBOX_BYBIT_WS"
ENV_SOURCE = "SIGNALBOX_SOURCE"
ENV_SYMBOLS = "SIGNALBOX_SYMBOLS"
ENV_UI_PORT = "SIGNALBOX_UI_PORT"
ENV_REPLAY_PORT = "SIGNALBOX_REPLAY_PORT"


def env_keys() -> dict[str, str]:
    """Every environment override and the key it sets (SIGNALBOX_CONFIG names the file
    instead). Each known venue's endpoint: SIGNALBOX_<VENUE>_URL and SIGNALBOX_<VENUE>_WS."""
    from pipeline.markets import VENUES

    keys = {ENV_HOME: "home", ENV_SOURCE: "source", ENV_SYMBOLS: "exchanges"}
    for venue in VENUES:
        keys[f"SIGNALBOX_{venue.upper()}_URL"] = f"{venue}.rest_url"
        keys[f"SIGNALBOX_{venue.upper()}_WS"] = f"{venue}.ws_url"
    keys |= {"SIGNALBOX_DAGSTER_STORAGE": "dagster.storage"}
    keys["SIGNALBOX_DAGSTER_POSTGRES_URL"] = "dagster.postgres_url"
    return {**keys, ENV_UI_PORT: "ui.port", ENV_REPLAY_PORT: "replay.port"}


DEFAULT = "default"


Source = Literal["auto", "live", "replay"]
LEGACY_SOURCE = "bybit"  # the name of `live` before there were several venues


class ConfigError(ValueError):
    """Bad configuration: the message names the file, the key, the value and what is allowed.
    `problems` holds one line per problem (`signalbox config check` prints each)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class Settings(_Section):
    """Validated configuration; paths are absolute."""

    exchanges: dict[str, list[str] | Literal["all"]] = DEFAULT_EXCHANGES  # venue -> symbols
    start_date: dt.date | None = None  # None: derived per home (pipeline/runtime/partitions.py)
    home: Path = Path(".signalbox")
    source: Source = "auto"
    bybit: BybitConfig = BybitConfig()
    hyperliquid: HyperliquidConfig = HyperliquidConfig()
    replay: ReplayConfig = ReplayConfig()
    ui: UiConfig = UiConfig()
    live: LiveConfig = LiveConfig()
    sidecar: SidecarConfig = SidecarConfig()
    backtest: BacktestConfig = BacktestConfig()
    dagster: DagsterStorage = DagsterStorage()  # pipeline/instance_storage.py
    bots: list[BotConfig] = []  # noqa: RUF012 (paper bots, pipeline/bots; `signalbox bots`)
    timeframes: list[str] = [  # noqa: RUF012 (as params above)
        "1m", "3m", "5m", "15m", "30m", "37m", "1h", "2h", "148m",
        "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
    ]  # fmt: skip
    personalities: list[str] = ["scalping", "swing", "ma_trend", "vote"]  # noqa: RUF012
    config_path: Path | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _legacy_source(cls, v: Any) -> Any:
        return "live" if v == LEGACY_SOURCE else v

    @field_validator("exchanges", mode="before")
    @classmethod
    def _all(cls, v: Any) -> Any:
        return normalize_all(v)

    @field_validator("exchanges")
    @classmethod
    def _exchanges(cls, v: dict[str, Symbols]) -> dict[str, Symbols]:
        from pipeline.markets import VENUES

        check_exchanges(v, VENUES)
        return v

    @property
    def markets(self) -> list[Market]:
        """Every configured (exchange, symbol), sorted and unique; a venue's `all` is what the
        home resolved it to (pipeline/exchanges/universe.py; ConfigError before that)."""
        found = set()
        for venue, symbols in self.exchanges.items():
            if symbols == ALL:
                try:
                    symbols = universe_symbols(self.home, venue, self.bybit.min_turnover_24h)
                except ValueError as err:
                    raise ConfigError(str(err)) from None
            found |= {Market(venue, s) for s in symbols}
        return sorted(found)

    @property
    def symbols(self) -> list[str]:
        """The Bybit symbols only (what `symbols:` configured before venues); prefer `markets`."""
        if self.exchanges.get("bybit") == ALL:
            return [m.symbol for m in self.markets if m.exchange == "bybit"]
        return list(self.exchanges.get("bybit", []))

    @field_validator("start_date")
    @classmethod
    def _start(cls, v: dt.date | None) -> dt.date | None:
        if v is not None and (v < dt.date(2018, 1, 1) or v > dt.datetime.now(dt.UTC).date()):
            raise ValueError(
                "must be a day between 2018-01-01 and today (UTC), as YYYY-MM-DD, or null to "
                "derive it from live.history_days"
            )
        return v

    @field_validator("timeframes")
    @classmethod
    def _timeframes(cls, v: list[str]) -> list[str]:
        from pipeline.candles.timeframes import parse_timeframe

        for tf in v:
            parse_timeframe(tf)
        if "1m" not in v:
            raise ValueError("must include 1m (every other timeframe is built from it)")
        return v

    @field_validator("personalities")
    @classmethod
    def _personalities(cls, v: list[str]) -> list[str]:
        from pipeline.strategy.personality import PERSONALITY_DIR, personality_path

        for name in v:
            if not os.path.exists(personality_path(name)):  # False, not OSError, for any path
                known = ", ".join(sorted(p.stem for p in PERSONALITY_DIR.glob("*.yaml")))
                raise ValueError(
                    f"{quote(name)} is neither a shipped personality ({known}) nor a YAML file"
                )
        if len(set(v)) != len(v):
            raise ValueError("lists a personality twice")
        return v

    def check_personalities(self) -> None:
        """Load every personality against the configured timeframes, so a broken file fails
        when a command starts rather than inside a run. Not a validator: resolving the
        indicator set imports TA-Lib and pandas (~0.5 s), which `sql` or `tail` need not pay."""
        from pipeline.strategy.personality import (
            PersonalityError,
            load_personality,
            personality_path,
        )

        for name in self.personalities:
            try:
                load_personality(personality_path(name), self.timeframes)
            except PersonalityError as err:
                where = self.config_path or "the configuration"
                msg = f"invalid configuration in {where}: personalities: {err}"
                raise ConfigError(msg) from None

    @property
    def personality_names(self) -> list[str]:
        """What signals, the socket and backtests call them: a file's name is its stem."""
        from pipeline.strategy.personality import personality_path

        return [personality_path(p).stem for p in self.personalities]

    # -- derived paths -------------------------------------------------------------------
    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def socket_path(self) -> Path:
        return self.home / self.sidecar.socket

    @property
    def up_pid_file(self) -> Path:
        """Names the running `signalbox up` of this home (`signalbox stop` reads it)."""
        return self.home / "up.pid"

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

    @property
    def reports_dir(self) -> Path:
        return self.home / self.backtest.report_dir

    def report_url(self, path: Path) -> str:
        """The URL under which `signalbox up` serves a file of the reports directory, so the
        Dagster UI links to something a browser can open (not a local path)."""
        from urllib.parse import quote as urlquote

        rel = Path(path).resolve().relative_to(self.reports_dir.resolve()).as_posix()
        return f"http://{self.ui.host}:{self.ui.reports_port}/{urlquote(rel)}"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced and validated again."""
        data = self.model_dump()
        data.update(changes)
        return _validate(data, self.config_path)


Origins = dict[str, str]  # dotted key -> "default" | the file's path | "$VAR"


_SHOWN_ERRORS = 3
_LISTED_ERRORS = 100  # `config check` lines, at most


# What pydantic puts in an error's location for the branch of a union it tried (`symbols` is
# a list or `all`): a type, not a key, so it is left out of the key named.
_UNION_BRANCHES = {"list[str]", "literal['all']"}


def _format_error(
    err: ValidationError, path: Path | None, origins: Origins, shorthand: bool = False
) -> ConfigError:
    """One line: the file, then `key = value: what is allowed` for the first few problems
    (a list of 5,000 bad items is one mistake, not 5,000 lines), values cut short. A value
    set by an environment variable is named by the variable; `shorthand`: the Bybit symbols
    came as `symbols:`, so that is the key named."""
    errors = [  # a list given where a list or `all` fits: the list's own errors say it all
        e
        for e in err.errors(include_url=False)
        if not (e["type"] == "literal_error" and isinstance(e.get("input"), list))
    ]
    problems = []
    env = env_keys()
    for e in errors[:_LISTED_ERRORS]:
        key = key_path([str(p) for p in e["loc"] if str(p) not in _UNION_BRANCHES]) or "(top level)"
        value = e.get("input")
        if shorthand and key.split(".")[0] == "exchanges":  # name what the file said
            key = "symbols" + key.removeprefix("exchanges").removeprefix(".bybit")
            value = value.get("bybit", value) if isinstance(value, dict) else value
        value = mask_url(value) if isinstance(value, str) else value  # no password shown
        shown = value.isoformat() if isinstance(value, dt.date) else quote(value)
        var = origin_of(origins, key).removeprefix("$")
        if var in env:
            shown += f" (set by {var})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "is not a known key (check the spelling; see signalbox.yaml for every key)"
        problems.append(f"{key} = {shown}: {msg}")
    shown_problems = problems[:_SHOWN_ERRORS]
    if len(errors) > _SHOWN_ERRORS:
        shown_problems.append(f"and {len(errors) - _SHOWN_ERRORS:,} more")
    if len(errors) > _LISTED_ERRORS:
        problems.append(f"and {len(errors) - _LISTED_ERRORS:,} more")
    head = f"invalid configuration in {path}" if path else "invalid configuration"
    return ConfigError(f"{head}: " + "; ".join(shown_problems), [f"{head}: {p}" for p in problems])


def _validate(data: dict[str, Any], path: Path | None, origins: Origins | None = None) -> Settings:
    origins = {} if origins is None else origins
    shorthand = "symbols" in data
    if shorthand:  # `symbols: [...]` is `exchanges: {bybit: [...]}`
        if "exchanges" in data:
            raise ConfigError(
                f"invalid configuration in {path or 'the configuration'}: both `symbols` and "
                "`exchanges` are given; keep one (`symbols: [...]` is shorthand for "
                "`exchanges: {bybit: [...]}`)"
            )
        data = {
            **{k: v for k, v in data.items() if k != "symbols"},
            "exchanges": {"bybit": data["symbols"]},
        }
        if "symbols" in origins:
            origins["exchanges"] = origins.pop("symbols")
    try:
        settings = Settings.model_validate({**data, "config_path": path})
    except ValidationError as err:
        raise _format_error(err, path, origins, shorthand) from None
    base = path.parent if path else REPO_ROOT
    home = settings.home if settings.home.is_absolute() else (base / settings.home)
    replay = settings.replay
    if replay.data:
        data = Path(replay.data).expanduser()
        data = (data if data.is_absolute() else base / data).resolve()
        if not data.is_file():
            where = str(path) if path else "configuration"
            raise ConfigError(
                f"invalid configuration in {where}:\n  replay.data = {replay.data!r}: no such "
                f"file ({data}); name a CSV or Parquet file of 1m candles, or null for the "
                "synthetic market"
            )
        replay = replay.model_copy(update={"data": str(data)})
    settings = settings.model_copy(update={"home": home.resolve(), "replay": replay})
    if settings.bots:
        _check_bots(settings, path)
    return settings


def _check_bots(settings: Settings, path: Path | None) -> None:
    """What each bot names must be configured too: its personality and markets."""
    from pipeline.bots.config import bot_problems

    try:
        markets = settings.markets
    except ConfigError:  # `all` not resolved yet: bots' markets are checked when they start
        markets = []
    found = bot_problems(
        settings.bots, settings.personality_names, markets, settings.backtest.params
    )
    if markets == []:
        found = [f for f in found if not f[0].endswith(".symbols")]
    if found:
        head = f"invalid configuration in {path}" if path else "invalid configuration"
        raise ConfigError(f"{head}: " + "; ".join(f"{k} = {quote(v)}: {m}" for k, v, m in found))


def origin_of(origins: Origins, key: str) -> str:
    """Where `key` (dotted) got its value: its own entry, else its closest parent's."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:n]))
        if found:
            return found
    return DEFAULT


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every non-mapping value (sections flattened)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(leaves(v, f"{key}."))
        else:
            out[key] = v
    return out


@dataclass(frozen=True)
class Loaded:
    """Settings with where each value came from, and which file was read and why."""

    settings: Settings
    origins: Origins
    file: Path | None  # None: no file, every value a default or from the environment
    file_chosen_by: str  # "--config", "$SIGNALBOX_CONFIG" or "default"

    def origin(self, key: str) -> str:
        return origin_of(self.origins, key)


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *sections, last = key.split(".")
    for s in sections:
        data[s] = dict(data.get(s) or {})
        data = data[s]
    data[last] = value


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Loaded:
    """Read the YAML file (`path`: from --config), apply environment overrides, validate;
    remember where every value came from."""
    env = dict(os.environ if env is None else env)
    chosen_by = "--config" if path else f"${ENV_CONFIG}" if env.get(ENV_CONFIG) else DEFAULT
    cfg_path = Path(path or env.get(ENV_CONFIG) or DEFAULT_CONFIG)
    exists = os.path.lexists(cfg_path)  # False, not OSError, for any path
    data: dict[str, Any] = {}
    origins: Origins = {}
    if exists:
        try:
            loaded = load_yaml(cfg_path) or {}
        except YamlFileError as err:
            raise ConfigError(f"invalid configuration in {cfg_path}: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"invalid configuration in {cfg_path}: top level must be a mapping")
        data = loaded
        origins = dict.fromkeys(leaves(data), str(cfg_path.resolve()))
    elif path or env.get(ENV_CONFIG):
        shown = quote(str(cfg_path), 200, bare=True)
        raise ConfigError(f"configuration file {shown} does not exist ({chosen_by})")
    for var, key in env_keys().items():
        text = env.get(var, "").strip()
        if not text:
            continue
        value: Any = text
        if key == "home":
            value = str(Path(text).expanduser().resolve())
        elif key == "exchanges":
            value = parse_markets(text)
            data.pop("symbols", None)  # the environment wins over the file's lists
            origins = {k: o for k, o in origins.items() if k.split(".")[0] not in (key, "symbols")}
        _set(data, key, value)
        origins[key] = f"${var}"
    settings = _validate(data, cfg_path.resolve() if exists else None, origins)
    floor = settings.bybit.min_turnover_24h
    listed = settings.exchanges.get("bybit") != ALL
    if floor is not None and listed and not origin_of(origins, "exchanges").startswith("$"):
        raise ConfigError(  # (a list from the environment: a run's, resolved from `all`)
            f"invalid configuration in {cfg_path}: bybit.min_turnover_24h = {floor:g}: "
            "filters `exchanges: {bybit: all}` only; remove it or use `all`"
        )
    return Loaded(settings, origins, cfg_path.resolve() if exists else None, chosen_by)


_LOADED: dict[tuple, Settings] = {}
_LOADED_MAX = 8


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the YAML file, apply environment overrides, validate.

    Remembered by everything it depends on (the file's bytes, the overrides, the working
    directory): a run asks for the settings through several resources, and a forked run
    inherits what its forkserver loaded, so the file is parsed and validated once; any change
    to the file or the environment loads afresh. Settings are frozen, so sharing is safe."""
    env = dict(os.environ if env is None else env)
    cfg_path = Path(path or env.get(ENV_CONFIG) or DEFAULT_CONFIG)
    try:  # a FIFO or a device would block a read: only a regular file is remembered
        text = cfg_path.read_bytes() if cfg_path.is_file() else None
    except OSError:
        text = None
    if text is None:  # missing, unreadable, not a file: `load` says what is wrong (or defaults)
        return load(path, env).settings
    overrides = tuple((k, env.get(k)) for k in (ENV_CONFIG, *env_keys()))
    key = (str(path) if path else None, str(cfg_path.resolve()), os.getcwd(), text, overrides)
    hit = _LOADED.get(key)
    if hit is None:
        hit = load(path, env).settings
        if len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)), None)
        _LOADED[key] = hit
    return hit


@lru_cache(maxsize=1)
def settings() -> Settings:
    """Process-wide settings, read once (Dagster run processes import this)."""
    return load_settings()
