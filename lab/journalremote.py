"""The lab's journal collector: systemd-journal-remote on the admin's side of the tunnel.

What docs/logs.md tells an owner to run on the hub, run for real: this machine's
systemd-journal-remote (Debian's package, lab/requirements-apt.txt) inside sams-admin, listening
on the hub's WireGuard address only, so the host reaches it through wg0 and nothing else reaches
it at all. It writes one journal file per sending peer (remote-<peer address>.journal) under the
lab's run/journal-remote/out/; `entries()` reads them with journalctl --directory, as an owner would.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.proc import daemon_pid, out, start_listener, stop_daemon
from lab.spec import NAMES, StatePaths
from settings.stack import JOURNAL_REMOTE_PORT

log = logging.getLogger("lab")

BINARY = "/usr/lib/systemd/systemd-journal-remote"


@dataclass(frozen=True)
class Collector:
    pid: int
    output: Path


def directory(paths: StatePaths) -> Path:
    return paths.run / "journal-remote"


def output(paths: StatePaths) -> Path:
    return directory(paths) / "out"


def command(listen: str, port: int, out_dir: Path) -> list[str]:
    """The collector's command line (docs/logs.md prints the same one for the hub)."""
    return [BINARY, f"--listen-http={listen}:{port}", f"--output={out_dir}/"]


def start(paths: StatePaths, listen: str, port: int = JOURNAL_REMOTE_PORT, timeout: float = 20.0) -> Collector:
    """Start the collector in sams-admin on listen:port; returns once it accepts connections. A
    restart keeps what it received (the same output directory)."""
    d = output(paths)
    d.mkdir(parents=True, exist_ok=True)
    pid = start_listener(NAMES.ns_admin, command(listen, port, d), directory(paths), "journal-remote", listen, port,
                         timeout)  # fmt: skip
    log.info("journal collector (pid %d) at %s:%d", pid, listen, port)
    return Collector(pid, d)


def running(paths: StatePaths) -> int | None:
    return daemon_pid(directory(paths) / "journal-remote.pid", b"systemd-journal-remote")


def stop(paths: StatePaths) -> list[str]:
    return stop_daemon(running(paths), "journal collector")


def files(paths: StatePaths) -> list[str]:
    """The collector's journal files, by name (one per sending peer)."""
    d = output(paths)
    return sorted(p.name for p in d.glob("*.journal")) if d.is_dir() else []


def entries(paths: StatePaths, identifier: str) -> list[dict[str, Any]]:
    """The received entries logged under this syslog identifier, as journalctl's JSON."""
    if not files(paths):
        return []
    text = out(["journalctl", f"--directory={output(paths)}", "-t", identifier, "-o", "json", "--no-pager"],
               check=False)  # fmt: skip
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def oldest(paths: StatePaths) -> dict[str, Any]:
    """The oldest entry the collector holds."""
    line = out(["sh", "-c", f"journalctl --directory={output(paths)} -o json --no-pager | head -n 1"])
    return dict(json.loads(line))
