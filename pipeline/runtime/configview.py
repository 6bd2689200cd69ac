"""`signalbox config check` and `config show`: the configuration as Signalbox sees it."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, Loaded, leaves, load
from pipeline.instance_storage import mask_url


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    return mask_url(v) if isinstance(v, str) else v  # a database URL's password is not shown


def _origin_text(loaded: Loaded, key: str) -> str:
    origin = loaded.origin(key)
    return f"environment {origin[1:]}" if origin.startswith("$") else origin


def effective(loaded: Loaded) -> dict[str, dict[str, Any]]:
    """Dotted key -> {"value", "from"} for every setting (sections flattened)."""
    data = loaded.settings.model_dump(exclude={"config_path"})
    return {
        k: {"value": _plain(v), "from": _origin_text(loaded, k)} for k, v in leaves(data).items()
    }


def _file_line(loaded: Loaded) -> str:
    by = {"--config": "command line --config", "default": "the default location"}.get(
        loaded.file_chosen_by, f"environment {loaded.file_chosen_by[1:]}"
    )
    if loaded.file is None:
        return f"# no configuration file (none at {by}): built-in defaults"
    return f"# configuration file: {loaded.file} (from {by})"


def show_main(config: str | None, as_json: bool = False) -> int:
    """`signalbox config show`: every effective value and where it came from; 2 if invalid."""
    try:
        loaded = load(config)
    except ConfigError as err:
        return _problems(err)
    rows = effective(loaded)
    from pipeline.exchanges.universe import summary

    resolved = summary(loaded.settings)
    if as_json:
        file = str(loaded.file) if loaded.file else None
        out = {"file": file, "settings": rows, "bybit_all": resolved}
        print(json.dumps(out, indent=1, default=str))
        return 0
    print(_file_line(loaded))
    width = max(len(k) for k in rows)
    for key, row in rows.items():
        value = json.dumps(row["value"], default=str)
        print(f"{key:<{width}} = {value}   # {row['from']}")
    if resolved:
        print(f"# bybit: all -> {resolved}")
    return 0


def check_main(config: str | None) -> int:
    """`signalbox config check`: 0 valid (personality files included), else 2 and one line
    per problem."""
    try:
        loaded = load(config)
        loaded.settings.check_personalities()
    except ConfigError as err:
        return _problems(err)
    where = loaded.file or "built-in defaults"
    print(f"configuration OK: {where}")
    return 0


def _problems(err: ConfigError) -> int:
    for line in err.problems:
        print(f"signalbox: {line}", file=sys.stderr)
    return 2
