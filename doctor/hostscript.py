"""Runs ON the mail host (shipped over SSH as `python3 - ARGS`; standard library only).

Prints one JSON object of facts: the host's clock, free space of the given paths' filesystems,
memory, the backup tool's record of its last run, the WAL segments PostgreSQL has not archived
yet, whether TCP connections to the given targets open, and (where ClamAV is on) clamd's answer
and the age of its signatures. It changes nothing. ARGS is one JSON object: {"paths": [...],
"backup_status": "...", "wal_status": "...", "outbound": [[host, port], ...],
"clamav": {"socket": "...", "daily": [...]} or null}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any


def disks(paths: list[str]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for path in paths:
        if not os.path.exists(path):
            continue
        st = os.statvfs(path)
        key = os.stat(path).st_dev
        if key in seen:
            continue
        seen.add(key)
        out.append({"path": path, "size": st.f_blocks * st.f_frsize, "available": st.f_bavail * st.f_frsize})
    return out


def memory() -> dict[str, int]:
    info = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    return {"mem_total": info["MemTotal"], "mem_available": info["MemAvailable"]}


def connect(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    result = {"target": host, "port": port}
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return {**result, "result": "unresolved", "detail": str(exc)}
    try:
        with socket.create_connection((str(infos[0][4][0]), port), timeout=timeout):
            return {**result, "result": "open", "detail": str(infos[0][4][0])}
    except ConnectionRefusedError as exc:
        return {**result, "result": "closed", "detail": str(exc)}
    except TimeoutError:
        return {**result, "result": "timeout", "detail": f"no answer in {timeout:.0f} s"}
    except OSError as exc:
        return {**result, "result": "error", "detail": str(exc)}


def backup_status(path: str) -> dict[str, Any]:
    """The record sams-backup writes after every run, as it is (the doctor reads it); null when no
    run has written one yet, and why when it cannot be read."""
    out: dict[str, Any] = {"backup_status_file": path, "backup_status": None, "backup_status_error": ""}
    try:
        with open(path) as fh:
            record = json.load(fh)
    except FileNotFoundError:
        return out
    except (OSError, ValueError) as exc:
        return {**out, "backup_status_error": f"{type(exc).__name__}: {exc}"}
    if not isinstance(record, dict):
        return {**out, "backup_status_error": f"not a JSON object but {type(record).__name__}"}
    return {**out, "backup_status": record}


def wal(status_dir: str) -> dict[str, Any]:
    """PostgreSQL marks a finished segment NAME.ready there and renames it NAME.done once
    archive_command succeeded: old .ready files mean archiving fails."""
    try:
        ready = [e for e in os.scandir(status_dir) if e.name.endswith(".ready")]
    except FileNotFoundError:
        return {"wal_status": status_dir, "wal_seen": False, "wal_waiting": 0, "wal_oldest": None}
    oldest = min((e.stat().st_mtime for e in ready), default=None)
    return {"wal_status": status_dir, "wal_seen": True, "wal_waiting": len(ready), "wal_oldest": oldest}


def clamav(socket_path: str, daily: list[str]) -> dict[str, Any]:
    """clamd's answer to PING (its protocol's z-prefixed, NUL-ended form) and the newest of the
    daily signature files' times."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(socket_path)
            s.sendall(b"zPING\0")
            answer = s.recv(64).rstrip(b"\0\n").decode(errors="replace")
    except OSError as exc:
        answer = f"{type(exc).__name__}: {exc}"
    times = [os.stat(p).st_mtime for p in daily if os.path.exists(p)]
    return {"clamd": answer, "clamav_daily": max(times, default=None)}


def facts(args: dict[str, Any]) -> dict[str, Any]:
    return {
        "taken_at": time.time(),
        "disks": disks(args["paths"]),
        **memory(),
        **backup_status(args["backup_status"]),
        "outbound": [connect(h, int(p)) for h, p in args["outbound"]],
        **wal(args["wal_status"]),
        **(clamav(args["clamav"]["socket"], args["clamav"]["daily"]) if args.get("clamav") else {}),
    }


if __name__ == "__main__":
    print(json.dumps(facts(json.loads(sys.argv[1]))))
