"""Print a benchmark's table and append it, with date, machine and command, to bench/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    mem = ""
    try:
        kb = int(
            next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1]
        )
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{platform.node()}: {os.cpu_count()} cores{mem}, {system}, Python {platform.python_version()}"


def record(title: str, rows: list[tuple[str, str]], notes: str = "") -> str:
    width = max(len(k) for k, _ in rows)
    table = "\n".join(["| figure | value |", "| --- | --- |", *(f"| {k:<{width}} | {v} |" for k, v in rows)])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    command = " ".join([f"python -m {spec.name}" if spec else sys.argv[0], *sys.argv[1:]])
    block = f"\n## {title} — {stamp}\n\nMachine: {machine()}  \nCommand: `{command}`\n\n{table}\n"
    if notes:
        block += f"\n{notes}\n"
    print(block)
    with RESULTS.open("a") as fh:
        fh.write(block)
    return block
