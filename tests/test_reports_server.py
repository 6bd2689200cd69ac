"""The reports server: serves the reports directory at `Settings.report_url`, read-only,
and nothing outside it (no `..`, no symlink leading out). Real sockets, a real process."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT, load_settings
from pipeline.runtime.reports_server import make_server

SECRET = b"outside the reports directory"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """reports/ with a report, a secret next to it, links out of it; served on a free port."""
    root = tmp_path / "reports"
    (root / "swing" / "run 1").mkdir(parents=True)
    (root / "swing" / "run 1" / "report.html").write_text("<h1>report</h1>")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (root / "up").symlink_to(tmp_path, target_is_directory=True)
    (root / "inside.html").symlink_to(root / "swing" / "run 1" / "report.html")
    server = make_server(root, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, server.server_address[1]
    server.shutdown()
    server.server_close()


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    """A request with the path sent exactly as given (no client-side normalization)."""
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        con.putrequest(method, path, skip_accept_encoding=True)
        con.endheaders()
        resp = con.getresponse()
        return resp.status, resp.read()
    finally:
        con.close()


def test_serves_files_of_the_reports_directory(served):
    _, port = served
    assert get(port, "/swing/run%201/report.html") == (200, b"<h1>report</h1>")
    assert get(port, "/inside.html")[0] == 200  # a link that stays inside is fine
    status, body = get(port, "/swing/")
    assert status == 200 and b"run 1" in body  # a listing to browse
    assert get(port, "/nope.html")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/swing/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/swing/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "//etc/passwd",
        "/" + str(Path("/etc/passwd")),
        "/%00",
    ],
)
def test_no_directory_traversal(served, path):
    _, port = served
    status, body = get(port, path)
    assert SECRET not in body and b"root:" not in body
    assert status == 404, (status, body[:200])


def test_no_symlink_escapes(served):
    _, port = served
    assert get(port, "/leak.txt")[0] == 404
    assert get(port, "/up/secret.txt")[0] == 404
    status, body = get(port, "/up/")
    assert status == 404 and b"secret" not in body


def test_read_only(served):
    root, port = served
    before = sorted(p.name for p in root.rglob("*"))
    for method in ("PUT", "POST", "DELETE"):
        assert get(port, "/swing/run%201/report.html", method)[0] == 501
    assert sorted(p.name for p in root.rglob("*")) == before
    assert (root / "swing" / "run 1" / "report.html").read_text() == "<h1>report</h1>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_module_serves_each_report_at_its_report_url(tmp_path):
    """`python -m pipeline.runtime.reports_server` (what `signalbox up` starts) answers at exactly
    the
    URL `Settings.report_url` gives a file, and a taken port is one clear line."""
    home = tmp_path / "home"
    port = _free_port()
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text(
        (REPO_ROOT / "signalbox.yaml")
        .read_text()
        .replace("reports_port: 3001", f"reports_port: {port}")
    )
    env = dict(os.environ, SIGNALBOX_CONFIG=str(cfg), SIGNALBOX_HOME=str(home))
    settings = load_settings(cfg, env=env)
    report = settings.reports_dir / "ma_trend" / "ma_trend_BTCUSDT_1h_20240101" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<p>ma_trend</p>")
    url = settings.report_url(report)
    assert url.startswith(f"http://127.0.0.1:{port}/ma_trend/")
    args = [sys.executable, "-m", "pipeline.runtime.reports_server"]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    assert resp.read() == b"<p>ma_trend</p>"
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the reports server never answered"
                time.sleep(0.1)
        taken = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
        assert taken.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "ui.reports_port" in taken.stderr and len(taken.stderr.strip().splitlines()) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
