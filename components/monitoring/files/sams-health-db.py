#!/usr/bin/python3
"""sams-health-db: the PostgreSQL health check (installed by SAMS; components/monitoring/health.py).

Socket-activated, one process per connection (sams-health-db.socket, Accept=yes, loopback only): it
reads one HTTP request from stdin, runs one query in the mail database through the container
(`docker exec <container> psql`), and answers on stdout `200 ok <rows>` when the query returned a
row, else `503 fail <why>`. The blackbox exporter's `sams_database` module asks it; so does nothing
else. Python's standard library only.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time

MAX_REQUEST = 8192  # bytes of request read at most (the answer does not depend on them)
READ_TIMEOUT_S = 3.0


def read_request() -> None:
    """Consume the request head (bounded in size and time); a silent client still gets an answer."""
    data = b""
    fd = sys.stdin.fileno()
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
        ready, _, _ = select.select([fd], [], [], READ_TIMEOUT_S)
        if not ready:
            return
        chunk = os.read(fd, MAX_REQUEST - len(data))
        if not chunk:
            return
        data += chunk


# `docker exec` says 126 when the container's runtime could not start the process at all ("OCI runtime
# exec failed: ... read init-p: connection reset by peer", seen once in the lab on a busy host): a
# hiccup of the exec, which says nothing of PostgreSQL (psql's own failures are 1 to 3). Tried once
# more before the check says "fail".
EXEC_NOT_STARTED = 126
RETRY_PAUSE_S = 0.3


def query(args: argparse.Namespace) -> tuple[bool, str]:
    argv = ["docker", "exec", args.container, "psql", "-U", args.user, "-d", args.database, "-XAt", "-c", args.query]
    deadline = time.monotonic() + args.timeout
    for attempt in (1, 2):
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, check=False, timeout=max(0.1, deadline - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            return False, f"no answer within {args.timeout} s"
        except OSError as exc:
            return False, f"docker: {exc.strerror}"
        if proc.returncode != EXEC_NOT_STARTED or attempt == 2 or time.monotonic() + RETRY_PAUSE_S >= deadline:
            break
        time.sleep(RETRY_PAUSE_S)
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out:
        last = (proc.stderr.strip().splitlines() or [f"psql exited {proc.returncode}"])[-1]
        return False, last[:200]
    return True, out.splitlines()[0][:50]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--container", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--timeout", type=float, default=6.0)
    parser.add_argument("query")
    args = parser.parse_args()
    read_request()
    ok, detail = query(args)
    body = f"{'ok' if ok else 'fail'} {detail}\n".encode()
    status = "200 OK" if ok else "503 Service Unavailable"
    head = f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    sys.stdout.buffer.write(head.encode() + body)
    sys.stdout.flush()
    if not ok:
        print(f"sams-health-db: {detail}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
