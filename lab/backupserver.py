"""The lab's backup server: Debian 13's restic-rest-server at backup.lab.example in the lab's internet.

A real server, reached by the host over the network like a provider's or the owner's own: HTTPS
with a certificate from the lab's CA (the one the host trusts as sams:backup.serverCa), htpasswd
authentication, one private repository per user (`--private-repos`), optionally append-only (the
host's credential then cannot delete snapshots, lab tests turn it on). Its binary comes from
trixie's package, fetched once from Debian's mirror into the lab cache (this machine may run an
older Debian without it) and run from there; the data lives in the lab's run/backup/.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab import acme, dns
from lab.proc import daemon_pid, run, start_listener, stop_daemon
from lab.spec import NAMES, StatePaths, cache_dir

log = logging.getLogger("lab")

NAME = dns.BACKUP_SERVER
PORT = 8000
USER = "sams"  # the host's login; its repository is /sams/ (--private-repos)
COPY_USER = "sams-archive"  # a second login and repository, for sams:backup.copyTo
PACKAGE = "restic-rest-server"
SUITE, MIRROR = "trixie", "http://deb.debian.org/debian"
BINARY = "usr/bin/restic-rest-server"


def repository(user: str = USER) -> str:
    """The restic repository URL the lab stack names (sams:backup.repository), or another login's."""
    return f"rest:https://{NAME}:{PORT}/{user}/"


def binary() -> Path:
    """restic-rest-server from Debian trixie, downloaded and unpacked once into the lab cache."""
    root = cache_dir() / f"{PACKAGE}-{SUITE}"
    exe = root / BINARY
    if exe.exists():
        return exe
    work = cache_dir() / f".{PACKAGE}-download"
    shutil.rmtree(work, ignore_errors=True)
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "archives" / "partial").mkdir(parents=True)
    sources = work / "sources.list"
    sources.write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} {SUITE} main\n")
    apt = [
        f"-oDir::Etc::SourceList={sources}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={work / 'lists'}",
        f"-oDir::Cache={work}",
        "-oAPT::Sandbox::User=root",
    ]
    run(["apt-get", *apt, "update", "-qq"], timeout=600)
    subprocess.run(["apt-get", *apt, "download", PACKAGE], cwd=work, check=True, capture_output=True, timeout=600)
    deb = next(work.glob(f"{PACKAGE}_*.deb"))
    staging = root.with_name(root.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    run(["dpkg-deb", "-x", str(deb), str(staging)])
    staging.rename(root)
    shutil.rmtree(work, ignore_errors=True)
    return exe


@dataclass(frozen=True)
class BackupServer:
    pid: int
    directory: Path

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def repository_dir(self) -> Path:
        return self.data / USER


def directory(paths: StatePaths) -> Path:
    return paths.run / "backup"


def htpasswd_line(user: str, password: str) -> str:
    # {SHA} (base64 SHA-1), which rest-server accepts beside bcrypt: a lab-only secret on a server that
    # only the lab's namespaces reach, and no bcrypt module is needed on this machine.
    return f"{user}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}\n"


def start(paths: StatePaths, listen: str, *, append_only: bool = False, timeout: float = 20.0) -> BackupServer:
    """Start rest-server in sams-inet on listen:PORT, with a login per repository; wait until it answers."""
    d = directory(paths)
    (d / "data").mkdir(parents=True, exist_ok=True)
    key, cert = acme.issue(paths, NAME, d, "backup")
    (d / "data" / ".htpasswd").write_text("".join(htpasswd_line(u, password(paths, u)) for u in (USER, COPY_USER)))
    argv = [str(binary()), "--path", str(d / "data"), "--listen", f"{listen}:{PORT}", "--private-repos"]
    argv += ["--tls", "--tls-cert", str(cert), "--tls-key", str(key)]
    if append_only:
        argv.append("--append-only")
    pid = start_listener(NAMES.ns_inet, argv, d, "rest-server", listen, PORT, timeout)
    log.info("backup server %s (pid %d) at %s:%d%s", NAME, pid, listen, PORT, " append-only" * append_only)
    return BackupServer(pid, d)


def running(paths: StatePaths) -> int | None:
    return daemon_pid(directory(paths) / "rest-server.pid", b"restic-rest-server")


def stop(paths: StatePaths) -> list[str]:
    return stop_daemon(running(paths), "backup server")


def password(paths: StatePaths, user: str = USER) -> str:
    """A login's rest-server password, made once per state directory (sams:backupKeySecret)."""
    f = paths.root / "keys" / f"backup-server-{user}.password"
    if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        f.write_text(base64.b32encode(os.urandom(20)).decode().rstrip("=").lower())
        f.chmod(0o600)
    return f.read_text().strip()
