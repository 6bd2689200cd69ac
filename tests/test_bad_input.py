"""Bad input never crashes or hangs: a hostile or mistaken signalbox.yaml or personality file
gives one short line naming the file and the key, through the real loaders and the real CLI.

Bounds are asserted without timing: every load runs under an address-space limit (a loader
that builds the alias bomb needs gigabytes), messages must be short single lines, and a timeout
marker only guards against a hang.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, Settings, load_settings
from pipeline.strategy.bars import Bars
from pipeline.strategy.personality import PersonalityError, load_personality
from pipeline.strategy.rules import MAX_NESTING, Schema, compile_condition

TIMEFRAMES = Settings().timeframes
SHORT = 400  # characters: a temporary path plus one sentence
DIGITS = "1" * 5000


@contextmanager
def memory_cap(extra_mb: int = 256) -> Iterator[None]:
    """This process may map at most `extra_mb` more while the block runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = used + (extra_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module", autouse=True)
def _imported() -> None:
    """Import what loading a personality imports (TA-Lib, pandas) before any memory cap."""
    load_personality("scalping", TIMEFRAMES)


def alias_bomb(key: str) -> str:
    """40 lines that expand to 2**39 strings: the 'billion laughs'."""
    lines = ["l0: &l0 [lol, lol]"]
    lines += [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 39)]
    return "\n".join([*lines, f"{key}: *l38"]) + "\n"


def nested_block(key: str, levels: int) -> str:
    return (
        f"{key}:\n" + "".join("  " * i + "a:\n" for i in range(1, levels)) + "  " * levels + "1\n"
    )


CONFIG_CASES = {
    "5,000-digit int": (f"replay: {{port: {DIGITS}}}\n", "replay.port", "5,000 characters"),
    "5,000-digit int, block style": (
        f"live:\n  history_days: {DIGITS}\n",
        "live.history_days",
        "5,000 characters",
    ),
    "lists nested 5,000 deep": (
        "symbols: " + "[" * 5000 + "]" * 5000 + "\n",
        "symbols.0.0",
        "nest deeper than 20 levels",
    ),
    "flow mapping nested 5,000 deep": (
        "backtest: {params: " + "{a: " * 5000 + "1" + "}" * 5001 + "\n",
        "backtest.params.a.a",
        "nest deeper than 20 levels",
    ),
    "block mapping nested 400 deep": (
        nested_block("live", 400),
        "live.a.a",
        "nest deeper than 20 levels",
    ),
    "alias bomb": (alias_bomb("symbols"), "l", "more than 10,000 values"),
    "alias used inside itself": ("symbols: &s [BTCUSDT, *s]\n", "symbols.1", "inside itself"),
    "5,000 bad list items": (
        "symbols: [" + ", ".join(["1"] * 5000) + "]\n",
        "symbols.0 = 1",
        "and 4,997 more",
    ),
    "a 5,000-character value": ("symbols: [" + "A" * 5000 + "]\n", "symbols = ", "5,000 char"),
    "a NUL character": ("symbols: [BTC\0USDT]\n", "not valid YAML", "#x0000"),
}


# The alias bomb hung the original loader inside pydantic's C code, where no in-process timeout
# reaches: it runs only through the CLI, in a subprocess that can be killed.
IN_PROCESS = {k: v for k, v in CONFIG_CASES.items() if k != "alias bomb"}


def assert_one_short_line(msg: str, *parts: str) -> None:
    """One line, short apart from the paths it names (pytest's temporary directories vary)."""
    shown = re.sub(r"/\S*?/pytest-of-[^/]+/pytest-\d+/[^/\s]+", "<tmp>", msg)
    assert "\n" not in msg.strip() and len(shown) < SHORT, msg[:2000]
    for part in parts:
        assert part in msg, msg


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("text", "key", "what"), IN_PROCESS.values(), ids=IN_PROCESS)
def test_bad_config_is_one_short_line_naming_file_and_key(tmp_path, text, key, what):
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text(text)
    with memory_cap(), pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert_one_short_line(str(err.value), f"invalid configuration in {cfg}: {key}", what)


@pytest.mark.timeout(20)
def test_huge_file_is_refused_before_reading(tmp_path: Path):
    cfg = tmp_path / "signalbox.yaml"
    with cfg.open("w") as f:
        f.write("symbols: [BTCUSDT]\n# ")
        f.truncate(50 << 20)  # 50 MB, sparse
    with memory_cap(), pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert_one_short_line(str(err.value), str(cfg), "52,428,800 bytes, over the limit")


@pytest.mark.timeout(20)
def test_unreadable_files(tmp_path: Path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("symbols: [BTCUSDT]  # café\n".encode("latin-1"))
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    cases = {
        latin: "is not UTF-8 text (byte 0xe9 at line 1, column 26)",
        tmp_path: "is a directory",
        fifo: "is not a regular file",
        loop: "cannot be read: Too many levels of symbolic links",
    }
    for path, what in cases.items():
        with pytest.raises(ConfigError) as err:
            load_settings(path, env={})
        assert_one_short_line(str(err.value), f"invalid configuration in {path}: {what}")
    secret = tmp_path / "secret.yaml"
    secret.write_text("symbols: [BTCUSDT]\n")
    secret.chmod(0)
    if os.access(secret, os.R_OK):
        pytest.skip("running as root: a file without read permission is still readable")
    with pytest.raises(ConfigError) as err:
        load_settings(secret, env={})
    assert_one_short_line(str(err.value), f"{secret}: cannot be read: Permission denied")


# -- personalities -------------------------------------------------------------------------------


def personality(tmp_path: Path, text: str | None = None, **rule: object) -> Path:
    """A personality file `mine.yaml` with one rule `r1` (fields overridden by `rule`)."""
    r1 = {"name": "r1", "when": "close > open", "direction": "long", "weight": 1, "reason": "up"}
    doc = {"name": "mine", "timeframes": ["1m"], "threshold": 0.5, "rules": [{**r1, **rule}]}
    path = tmp_path / "mine.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(doc, width=1 << 30))
    return path


HEADER = "name: mine\ntimeframes: [1m]\n"
RULE = "rules:\n  - {name: r1, when: close > open, direction: long, reason: up, weight: %s}\n"
PERSONALITY_CASES = {
    "not x 3000": (
        {"when": "not " * 3000 + "close > open"},
        "rule 'r1': `when`: the condition 'not not",
        "is longer than 1000 characters",
    ),
    "close + x 20000": (
        {"when": "close + " * 20000 + "close", "direction": "both"},
        "rule 'r1': `when`: the condition 'close + close",
        "is longer than 1000 characters",
    ),
    "minus x 990": (
        {"when": "-" * 990 + "close", "direction": "both"},
        "rule 'r1': `when`: the condition '---",
        f"nests deeper than {MAX_NESTING} levels",
    ),
    "a number too large for a float": (
        {"when": "close > " + "9" * 400},
        "rule 'r1': `when`: the number 999",
        "is too large",
    ),
    "a reason formatted a gigabyte wide": (
        {"reason": "{close:.99999999f}"},
        "rule 'r1': reason placeholder {close}: format '.99999999f'",
        "below 100",
    ),
    "5,000-digit weight": (
        HEADER + "threshold: 0.5\n" + RULE % DIGITS,
        "rule 'r1': `weight` must be a positive number, got '1111",
        "(5,000 characters)",
    ),
    "5,000-digit threshold": (
        HEADER + f"threshold: {DIGITS}\n" + RULE % 1,
        "`threshold` must be a number in (0, 1], got '1111",
        "(5,000 characters)",
    ),
    "lists nested 5,000 deep": (
        "name: mine\ntimeframes: " + "[" * 5000 + "]" * 5000 + "\n",
        "timeframes.0.0",
        "nest deeper than 20 levels",
    ),
    "alias bomb": (alias_bomb("rules"), "l", "more than 10,000 values"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("change", "where", "what"), PERSONALITY_CASES.values(), ids=PERSONALITY_CASES
)
def test_bad_personality_is_one_short_line_naming_file_rule_and_field(
    tmp_path, change, where, what
):
    path = (
        personality(tmp_path, change)
        if isinstance(change, str)
        else personality(tmp_path, **change)
    )
    with memory_cap(), pytest.raises(PersonalityError) as err:
        load_personality(path, TIMEFRAMES)
    assert_one_short_line(str(err.value), f"{path}: {where}", what)


def test_the_deepest_accepted_condition_compiles_and_evaluates_with_little_stack_left():
    """Compiling and evaluating recurse per level: at the limit they fit in what remains after
    most of the recursion limit is spent (as deep inside a Dagster run)."""
    import numpy as np

    schema = Schema("1m", ("1m",), frozenset({"close", "open"}))
    text = "close + " * (MAX_NESTING - 2) + "close"
    bars = Bars(3, lambda tf, col: np.arange(3.0))

    def at_depth(n: int) -> np.ndarray:
        return at_depth(n - 1) if n else compile_condition(text, schema)(bars)

    out = at_depth(sys.getrecursionlimit() - 450)
    np.testing.assert_allclose(out, np.arange(3.0) * (MAX_NESTING - 1), rtol=0, atol=1e-9)


# -- through the CLI -----------------------------------------------------------------------------


def run_cli(cfg: Path, *command: str, memory_mb: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # the original loader needed 1.4 GB for the alias bomb
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    return subprocess.run(
        [sys.executable, "-m", "pipeline.runtime.cli", "--config", str(cfg), *command],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=60,
        env={**os.environ, "SIGNALBOX_HOME": str(cfg.parent / "home")},
    )


BACKFILL = ("backfill", "--start", "2024-01-01", "--end", "2024-01-01")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("case", "command"),
    [
        ("alias bomb", BACKFILL),
        ("5,000-digit int", ("sql", "SELECT 1")),
        ("lists nested 5,000 deep", BACKFILL),
    ],
)
def test_cli_exits_2_with_one_line(tmp_path: Path, case: str, command: tuple[str, ...]):
    text, key, what = CONFIG_CASES[case]
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text(text)
    r = run_cli(cfg, *command, memory_mb=512)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert_one_short_line(r.stderr, f"signalbox: invalid configuration in {cfg}: {key}", what)


@pytest.mark.timeout(120)
def test_cli_names_the_personality_file_rule_and_field(tmp_path: Path):
    path = personality(tmp_path, when="not " * 3000 + "close > open")
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text(f"personalities: [scalping, {path}]\n")
    r = run_cli(cfg, *BACKFILL, memory_mb=1024)  # TA-Lib and polars need ~400 MB to import
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert_one_short_line(
        r.stderr,
        f"signalbox: invalid configuration in {cfg}: personalities: {path}: rule 'r1': `when`:",
        "longer than 1000 characters",
    )
