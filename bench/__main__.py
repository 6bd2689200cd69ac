"""Run the benchmarks and write BENCHMARKS.md.

Each `bench/bench_<name>.py` defines `TITLE` and `run() -> str` (a markdown body). Every number
is reported next to a baseline measured in the same run, because these machines are noisy.

    python -m bench                 # everything, rewrites BENCHMARKS.md
    python -m bench backfill live   # only those modules; their sections are replaced in place
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "BENCHMARKS.md"
ORDER = [
    "replay",
    "backfill",
    "live",
    "timeframes",
    "signals",
    "sidecar",
    "backtest",
    "e2e",
    "fast",
    "orderflow",
    "bots",
    "scale",
    "backfill_scale",
]


def _modules(selected: list[str]) -> list[str]:
    found = {p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py")}
    unknown = set(selected) - found
    if unknown:
        sys.exit(f"unknown benchmark(s) {sorted(unknown)}; available: {sorted(found)}")
    names = selected or sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    return names


def _header() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        "# Benchmarks\n\n"
        "Written by `make bench` (`python -m bench`). Every figure sits next to a baseline "
        "measured in the same run; ratios are what to compare across machines.\n\n"
        f"Last full run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} x "
        f"{cpu}, Python {platform.python_version()}.\n"
    )


def _split(text: str) -> dict[str, str]:
    """Existing sections keyed by module name (from the `<!-- bench:name -->` markers)."""
    parts = re.split(r"^<!-- bench:(\w+) -->\n", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    names = _modules(argv)
    sections = _split(OUT.read_text()) if argv and OUT.exists() else {}
    head = OUT.read_text().split("<!-- bench:", 1)[0] if argv and OUT.exists() else _header()
    for name in names:
        mod = importlib.import_module(f"bench.bench_{name}")
        print(f"== {mod.TITLE} ==", flush=True)
        t0 = time.perf_counter()
        body = mod.run().strip()
        took = time.perf_counter() - t0
        when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        sections[name] = f"## {mod.TITLE}\n\n{body}\n\n_(run {when}, took {took:.0f} s)_\n\n"
        print(body, flush=True)
        # written after each benchmark, so a later one failing loses nothing measured
        ordered = sorted(sections, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
        OUT.write_text(
            head.rstrip() + "\n\n" + "".join(f"<!-- bench:{n} -->\n{sections[n]}" for n in ordered)
        )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
