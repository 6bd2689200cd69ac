"""The reports directory over HTTP, read-only, so the Dagster UI links to reports a browser
can open (`Settings.report_url`), not to local paths.

`signalbox up` runs it as a supervised child (`python -m pipeline.runtime.reports_server`) on
`ui.host`:`ui.reports_port`. It serves files under `Settings.reports_dir` and nothing else:
GET and HEAD only, `..` never leaves the directory, and a symlink inside it that points
outside answers 404 like a missing file.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.config import ConfigError, load_settings

OUTSIDE = "\0outside"  # a path no file system has: answers 404


class ReportsHandler(SimpleHTTPRequestHandler):
    """Static files of one directory; whatever resolves outside it does not exist."""

    root: Path

    def __init__(self, *args, root: Path, **kwargs) -> None:
        self.root = root
        super().__init__(*args, directory=str(root), **kwargs)

    def translate_path(self, path: str) -> str:
        # The stdlib drops `..` and absolute parts; resolving follows symlinks, so a link
        # (or a link's parent) that leads outside is caught here, before anything is opened.
        local = super().translate_path(path)
        try:
            resolved = Path(local).resolve()
        except (OSError, ValueError):  # a NUL byte, a symlink loop
            return OUTSIDE
        if not resolved.is_relative_to(self.root):
            return OUTSIDE
        return str(resolved) + ("/" if local.endswith("/") else "")

    def send_head(self):
        if self.translate_path(self.path) == OUTSIDE:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()


def make_server(root: Path, host: str, port: int) -> ThreadingHTTPServer:
    """A server for `root` (created if missing) on host:port (0: a free port)."""
    root.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(ReportsHandler, root=root.resolve())
    return ThreadingHTTPServer((host, port), handler)


def main() -> int:
    try:
        s = load_settings()
    except ConfigError as err:
        print(f"signalbox reports: {err}", file=sys.stderr)
        return 2
    host, port = s.ui.host, s.ui.reports_port
    try:
        server = make_server(s.reports_dir, host, port)
    except OSError as err:
        print(
            f"signalbox reports: cannot listen on {host}:{port} ({err.strerror}); stop what "
            "holds the port or set ui.reports_port in signalbox.yaml",
            file=sys.stderr,
        )
        return 2
    print(f"serving {s.reports_dir} at http://{host}:{port}/ (read-only)", file=sys.stderr)
    sys.stderr.flush()
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
