"""The commands people look for, run as people run them (subprocesses): version,
personalities, config check/show, the port variables, `up --help`, `make run ARGS=...`,
a taken replay port, `tail` without a sidecar, one `up` per home, `stop`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import REPO_ROOT
from pipeline.runtime import pids

CLI = [sys.executable, "-m", "pipeline.runtime.cli"]


def run(
    args: list[str], home: Path, cwd: Path = REPO_ROOT, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess:
    e = {**os.environ, "SIGNALBOX_HOME": str(home), **env}
    for var in ("SIGNALBOX_CONFIG", "SIGNALBOX_UI_PORT", "SIGNALBOX_REPLAY_PORT"):
        if var not in env:
            e.pop(var, None)
    return subprocess.run(
        CLI + args, env=e, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def config(tmp_path: Path, **top: object) -> Path:
    path = tmp_path / "signalbox.yaml"
    path.write_text(yaml.safe_dump(top))
    return path


def test_version_names_the_package_its_libraries_and_python(home):
    r = run(["version"], home)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == ["signalbox", "dagster", "duckdb", "polars", "ta-lib", "pybit", "python"]
    assert "signalbox  0.1.0" in r.stdout
    assert f"python     {sys.version.split()[0]}" in r.stdout


def test_personalities_lists_configured_and_shipped_with_timeframes_and_a_line(tmp_path, home):
    r = run(
        ["personalities"], home, SIGNALBOX_CONFIG=str(config(tmp_path, personalities=["swing"]))
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["on", "swing", "15m,1h"]
    assert "Multi-day swings on 15-minute bars" in lines[0]
    off = {line.split()[1]: line for line in lines[1:4]}
    assert set(off) == {"scalping", "ma_trend", "vote"}
    assert all(line.startswith("off ") for line in off.values())
    assert "37m,148m,1d" in off["ma_trend"] and "Trend-following" in off["ma_trend"]


def test_personalities_new_writes_a_template_that_loads_and_never_overwrites(tmp_path, home):
    from pipeline.strategy.personality import load_personality

    r = run(["personalities", "new", "my_trend", "--dir", str(tmp_path)], home)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "my_trend.yaml"
    assert str(path) in r.stdout and "signalbox.yaml" in r.stdout and "personalities:" in r.stdout
    text = path.read_text()
    assert text.count("#") > 10  # commented
    p = load_personality(path)
    assert p.name == "my_trend" and p.timeframes == ("15m", "1h") and p.rules
    # the market-context columns are documented, with their rule examples shipped off
    from pipeline.strategy.context import COLUMNS, reads_context
    from pipeline.strategy.personality import personality_from_dict

    for word in (*COLUMNS, "NULL", "when_unknown", "pipeline-only", "enabled: false"):
        assert word in text, word
    assert reads_context(p) == []  # so it stays a fast-lane personality as written
    data = yaml.safe_load(text)
    for rule in data["rules"]:
        rule.pop("enabled", None)
    on = personality_from_dict(data, str(path))
    assert reads_context(on) == ["basis_bps", "buy_ratio", "funding_rate"]
    # listed in a configuration, it is accepted and shown with its summary
    cfg = config(tmp_path, personalities=["swing", str(path)])
    assert run(["config", "check"], home, SIGNALBOX_CONFIG=str(cfg)).returncode == 0
    r = run(["personalities"], home, SIGNALBOX_CONFIG=str(cfg))
    assert "my_trend" in r.stdout and "Trend-following entries on 15-minute bars" in r.stdout

    path.write_text("# mine\n")
    r = run(["personalities", "new", "my_trend", "--dir", str(tmp_path)], home)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert path.read_text() == "# mine\n"
    r = run(["personalities", "new", "swing", "--dir", str(tmp_path)], home)
    assert r.returncode == 2 and "shipped personality" in r.stderr
    assert not (tmp_path / "swing.yaml").exists()
    r = run(["personalities", "new", "My-Trend", "--dir", str(tmp_path)], home)
    assert r.returncode == 2 and "not a personality name" in r.stderr
    r = run(["personalities", "new", "other"], home, cwd=tmp_path)  # default: where it runs
    assert r.returncode == 0 and (tmp_path / "other.yaml").exists()


def test_a_broken_configured_personality_is_shown_and_fails(tmp_path, home):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntimeframes: [1m]\nthreshold: 0.5\nrules: []\n")
    cfg = config(tmp_path, personalities=["swing", str(bad)])
    r = run(["personalities"], home, SIGNALBOX_CONFIG=str(cfg))
    assert r.returncode == 2
    assert "does not load" in r.stdout and "bad" in r.stdout
    r = run(["config", "check"], home, SIGNALBOX_CONFIG=str(cfg))
    assert r.returncode == 2 and str(bad) in r.stderr


def test_config_check_prints_one_line_per_problem(tmp_path, home):
    r = run(["config", "check"], home)
    assert r.returncode == 0 and "configuration OK" in r.stdout
    cfg = config(tmp_path, symbols=["btc-usdt"], ui={"port": 0}, live={"history_dayz": 3})
    r = run(["config", "check"], home, SIGNALBOX_CONFIG=str(cfg))
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 3, r.stderr
    for line, key in zip(sorted(lines), ["live.history_dayz", "symbols", "ui.port"], strict=True):
        assert line.startswith(f"signalbox: invalid configuration in {cfg}: {key} = "), line


def test_config_show_says_where_each_value_came_from(tmp_path, home):
    cfg = config(tmp_path, symbols=["ETHUSDT"], ui={"port": 3123})
    env = {"SIGNALBOX_CONFIG": str(cfg), "SIGNALBOX_REPLAY_PORT": "9123"}
    r = run(["config", "show"], home, **env)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert r.stdout.startswith(f"# configuration file: {cfg} (from environment SIGNALBOX_CONFIG)")
    assert rows["exchanges.bybit"].endswith(f'["ETHUSDT"]   # {cfg}')  # `symbols:` shorthand
    assert rows["ui.port"].endswith(f"3123   # {cfg}")
    assert rows["replay.port"].endswith("9123   # environment SIGNALBOX_REPLAY_PORT")
    assert rows["home"].endswith("# environment SIGNALBOX_HOME")
    assert rows["live.history_days"].endswith("7   # default")
    r = run(["--config", str(cfg), "config", "show", "--json"], home)
    shown = json.loads(r.stdout)
    assert shown["file"] == str(cfg)
    assert shown["settings"]["ui.port"] == {"value": 3123, "from": str(cfg)}
    assert shown["settings"]["ui.host"] == {"value": "127.0.0.1", "from": "default"}
    r = run(["config", "show"], home, SIGNALBOX_CONFIG=str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.parametrize(
    ("var", "value", "allowed"),
    [
        ("SIGNALBOX_UI_PORT", "abc", "valid integer"),
        ("SIGNALBOX_UI_PORT", "0", "greater than or equal to 1"),
        ("SIGNALBOX_REPLAY_PORT", "70000", "less than or equal to 65535"),
    ],
)
def test_port_variables_are_validated_and_errors_name_the_variable(home, var, value, allowed):
    r = run(["status"], home, **{var: value})
    assert r.returncode == 2
    assert f"= '{value}' (set by {var})" in r.stderr and allowed in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_port_variables_set_the_ports(home):
    from pipeline.config import load_settings

    s = load_settings(env={"SIGNALBOX_UI_PORT": "3444", "SIGNALBOX_REPLAY_PORT": "9444"})
    assert (s.ui.port, s.replay.port) == (3444, 9444)


def test_up_help_shows_the_effective_defaults(tmp_path, home):
    cfg = config(tmp_path, ui={"port": 3123}, live={"history_days": 2})
    r = run(["--config", str(cfg), "up", "--help"], home)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "default 3123 from signalbox.yaml" in text
    assert "default 2 from signalbox.yaml" in text
    assert "default auto from built-in default" in text
    r = run(["up", "--help"], home, SIGNALBOX_CONFIG=str(cfg), SIGNALBOX_UI_PORT="3222")
    assert "default 3222 from $SIGNALBOX_UI_PORT" in " ".join(r.stdout.split())
    cfg.write_text("ui: {port: nope}\n")
    r = run(["--config", str(cfg), "up", "--help"], home)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    text = " ".join(r.stdout.split())
    assert "does not load" in text and "ui.port = 'nope'" in text


def test_make_run_passes_args_to_up():
    r = subprocess.run(
        ["make", "-n", "run", "ARGS=--port 3005 --history-days 1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "signalbox up --port 3005 --history-days 1" in r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("listening", [False, True])
def test_a_taken_replay_port_is_one_clear_line(tmp_path, home, listening):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    if listening:
        holder.listen()  # accepts, never answers
    port = holder.getsockname()[1]
    cfg = config(
        tmp_path, source="replay", ui={"port": _free_port()}, bybit={"probe_timeout_s": 0.2}
    )
    try:
        r = run(["up"], home, SIGNALBOX_CONFIG=str(cfg), SIGNALBOX_REPLAY_PORT=str(port))
    finally:
        holder.close()
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"signalbox: port {port} on 127.0.0.1 is in use: stop what holds it")
    assert "SIGNALBOX_REPLAY_PORT" in last and "replay.port" in last
    assert "Traceback" not in r.stderr and "--port 0" not in r.stderr
    assert "signalbox replay" not in r.stderr  # the hint for a hand-started exchange
    assert not (home / "up.pid").exists()  # up let go of the home on its way out


def test_a_taken_ui_port_names_the_variable(tmp_path, home):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        r = run(["up"], home, SIGNALBOX_UI_PORT=str(port))
    assert r.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in r.stderr and "SIGNALBOX_UI_PORT" in r.stderr


def test_tail_without_a_sidecar_says_how_to_start_one(home):
    r = run(["tail"], home, timeout=30)
    assert r.returncode == 1
    [line] = r.stderr.splitlines()
    assert str(home / "sidecar.sock") in line
    assert "`signalbox up`" in line and "`signalbox sidecar`" in line


# -- one `up` per home, and `stop` ------------------------------------------------------------
# A stand-in for `up` that keeps its contract (pid file, children in their own process group,
# SIGTERM stops them): real processes, without the minute a real `up` takes to start.
STAND_IN = """
import signal, sys, time
from pathlib import Path
from pipeline.runtime import pids
from pipeline.runtime.processes import spawn, stop
assert pids.claim(Path(sys.argv[1])) is None
child = spawn([sys.executable, "-m", "pipeline.runtime.cli", "sidecar"])
def bye(*_):
    stop(child)
    sys.exit(0)
if sys.argv[2] == "obeys":
    signal.signal(signal.SIGTERM, bye)
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def _stand_in(home: Path, mode: str = "obeys") -> subprocess.Popen:
    env = {**os.environ, "SIGNALBOX_HOME": str(home)}
    env.pop("SIGNALBOX_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, str(home / "up.pid"), mode],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 20
    while not (home / "sidecar.sock").exists():
        assert time.monotonic() < deadline, "the stand-in's sidecar did not start"
        time.sleep(0.05)
    return proc


def _gone(pid: int) -> bool:
    return pids.started_at(pid) is None


def test_a_second_up_on_the_same_home_is_refused(home):
    proc = _stand_in(home)
    try:
        r = run(["up"], home)
        assert r.returncode == 2
        assert f"already running for {home} (pid {proc.pid})" in r.stderr
        assert "`signalbox stop`" in r.stderr
    finally:
        proc.kill()
        proc.wait()


def test_a_stale_pid_file_does_not_block(tmp_path):
    path = tmp_path / "up.pid"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "started_at": time.time()}))
    assert pids.holder(path) is None
    assert pids.claim(path) is None
    assert pids.holder(path) == os.getpid()
    pids.release(path)
    assert not path.exists()


def test_stop_when_idle_says_nothing_is_running(home):
    r = run(["stop"], home)
    assert r.returncode == 0 and "nothing running" in r.stderr


def test_stop_stops_up_and_its_children_and_says_what(home):
    proc = _stand_in(home)
    sidecar = [p for p, cmd in pids.descendants(proc.pid).items() if cmd.endswith(" sidecar")]
    assert len(sidecar) == 1
    r = run(["stop"], home)
    assert r.returncode == 0, r.stderr
    assert f"stopped `signalbox up` (pid {proc.pid}): sidecar (pid {sidecar[0]})" in r.stderr
    assert proc.wait(5) == 0
    assert _gone(sidecar[0])
    assert not (home / "up.pid").exists()
    assert "nothing running" in run(["stop"], home).stderr


def test_stop_kills_an_up_that_does_not_stop(home):
    proc = _stand_in(home, "ignores")
    kids = list(pids.descendants(proc.pid))
    try:
        r = run(["stop", "--timeout", "1"], home)
        assert r.returncode == 0, r.stderr
        assert "still running after 1 s" in r.stderr and "killed `signalbox up`" in r.stderr
        assert proc.wait(5) == -signal.SIGKILL
        assert all(_gone(k) for k in kids)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tail_and_status_modules_stay_light(home):
    """`tail` (and importing the status module) never loads Dagster or polars: `tail` must
    start in well under a second, and `status` pays for Dagster only when it reads runs."""
    code = (
        "import sys; from pipeline.runtime.cli import main; "
        "import pipeline.runtime.status, pipeline.runtime.running; "
        "code = main(['tail']); "
        "print(code, sorted(m for m in ('dagster', 'polars', 'talib') if m in sys.modules))"
    )
    env = {**os.environ, "SIGNALBOX_HOME": str(home)}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.stdout.strip() == "1 []", r.stdout + r.stderr
