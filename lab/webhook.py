"""A Slack-compatible webhook receiver in the lab's internet, for Alertmanager's notifications.

Slack's incoming webhooks take a JSON POST and answer 200 "ok"; this one does the same and keeps
every body it gets, one JSON object a line, in run/webhook/posts.jsonl, so a lab test can see what
the owner's Slack channel would show. Run as `python -m lab.webhook --listen ADDR --port N --out FILE`
in sams-inet (start/stop below); the monitoring lab test starts and stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lab.proc import daemon_pid, start_lab_module, stop_daemon
from lab.spec import NAMES, StatePaths

log = logging.getLogger("lab")

PORT = 8099
PATH = "/services/T0SAMSLAB/B0SAMSLAB/webhook"  # the shape of a Slack incoming-webhook path
HEARTBEAT_PATH = "/ping/sams-lab-heartbeat"  # the shape of a dead man's switch ping URL (healthchecks.io)


def serve(listen: str, port: int, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                payload: Any = json.loads(body)
            except json.JSONDecodeError:
                self.send_response(400)
                self.end_headers()
                return
            with out.open("a") as fh:
                fh.write(json.dumps({"received": time.time(), "path": self.path, "body": payload}) + "\n")
            self.send_response(200 if self.path in (PATH, HEARTBEAT_PATH) else 404)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

    server = ThreadingHTTPServer((listen, port), Handler)
    print(f"listening on {listen}:{port}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    serve(args.listen, args.port, args.out)
    return 0


# --- shell: start and stop for the lab -----------------------------------------------------------------


def directory(paths: StatePaths) -> Path:
    return paths.run / "webhook"


def posts_file(paths: StatePaths) -> Path:
    return directory(paths) / "posts.jsonl"


def url(address: str) -> str:
    """The webhook URL the host's Alertmanager is given (sams:monitoringWebhookUrl)."""
    return f"http://{address}:{PORT}{PATH}"


def heartbeat_url(address: str) -> str:
    """The dead man's switch URL the host's Alertmanager pings (sams:monitoringHeartbeatUrl)."""
    return f"http://{address}:{PORT}{HEARTBEAT_PATH}"


def start(paths: StatePaths, address: str, timeout: float = 20.0) -> int:
    args = ["--listen", address, "--port", str(PORT), "--out", str(posts_file(paths))]
    pid = start_lab_module(NAMES.ns_inet, "webhook", args, directory(paths), timeout)
    log.info("webhook receiver (pid %d) at %s", pid, url(address))
    return pid


def posts(paths: StatePaths) -> list[dict[str, Any]]:
    """Every POST so far: {"received": unix time, "path": ..., "body": the JSON Alertmanager sent}."""
    try:
        return [json.loads(line) for line in posts_file(paths).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def running(paths: StatePaths) -> int | None:
    return daemon_pid(directory(paths) / "webhook.pid", b"lab.webhook")


def stop(paths: StatePaths) -> list[str]:
    return stop_daemon(running(paths), "webhook")


if __name__ == "__main__":
    sys.exit(main())
