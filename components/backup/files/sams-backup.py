#!/usr/bin/python3
"""sams-backup: nightly restic snapshots of the mail host, and the three restores (SAMS, components/backup).

Installed by the backup step with its config in /etc/sams/backup/ (config.json, and root-only
`env` and `password`); runs as root. Standard library only: it runs on a bare Debian 13.

  sams-backup copy                      restic copy to the second repository (sams-backup-copy.service)
  sams-backup run                       the nightly run (sams-backup.service): PostgreSQL base
                                        backup, then the files, forget, check, status record
  sams-backup status                    the last run's status record (JSON)
  sams-backup snapshots                 the repository's snapshots (restic's JSON)
  sams-backup check [--read-data]       restic check of the repository (--read-data: all of it)
  sams-backup restore-mailbox ADDRESS [--folder NAME] [--snapshot ID]
                                        put one mailbox's (or folder's) messages from a snapshot
                                        back into place; messages there now are kept
  sams-backup restore-postgres (--time 'YYYY-MM-DD HH:MM:SS' | --latest)
                                        PostgreSQL as it was at that moment (UTC)
  sams-backup restore-host [--snapshot ID] [--if-new]
                                        the whole host's data; --if-new: only on a host that has
                                        never had mail (the new-host path of `pulumi up`)

Nothing is deleted by a restore: what it replaces is moved aside to <path>.before-<time>.
Exit codes: 0 success, 1 failure (the message names the repository and restic's reason), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

CONFIG = Path(os.environ.get("SAMS_BACKUP_CONFIG", "/etc/sams/backup/config.json"))
# restic's own exit codes (0.17+): the repository does not exist, the password is wrong, a lock.
RESTIC_NO_REPOSITORY, RESTIC_WRONG_PASSWORD, RESTIC_LOCKED = 10, 12, 11
BASE_TAR = "postgres-base.tar"  # the stdin file name of the PostgreSQL snapshot
TAG = "sams"
# A WAL segment: timeline, log and segment, 8 hex digits each.
SEGMENT = re.compile(r"^[0-9A-F]{24}$")
BACKUP_LABEL = re.compile(r"^([0-9A-F]{24})\.[0-9A-F]{8}\.backup$")


class Failure(Exception):
    """A run or restore failed; the message says what and why."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(value: str) -> dt.datetime:
    """restic's snapshot times (RFC 3339 with nanoseconds) and the CLI's 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    text = value.strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Python parses microseconds, restic writes nanoseconds
    parsed = dt.datetime.fromisoformat(text.replace(" ", "T", 1))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    return json.loads(path.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (the credentials restic reads from its environment); no quoting, no expansion."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                out[key.strip()] = value
    return out


def redact(url: str) -> str:
    """No password in a URL that is logged or recorded (an SFTP login name stays: it is no secret)."""
    return re.sub(r"//[^/@:]*:[^/@]*@", "//", url)


def sftp_login(url: str) -> tuple[str, str, int]:
    """The login, host and port of an sftp: repository URL (ValueError for other forms)."""
    rest = url.removeprefix("sftp:")
    if rest.startswith("//"):  # sftp://user@host[:port]//path
        parsed = urllib.parse.urlsplit(rest)
        if parsed.username and parsed.hostname:
            return parsed.username, parsed.hostname, parsed.port or 22
    found = re.match(r"^([^@/]+)@(\[[^]]+\]|[^:/]+):", rest)  # sftp:user@host:path
    if not url.startswith("sftp:") or not found:
        raise ValueError(f"not an sftp: repository: {url}")
    return found.group(1), found.group(2).strip("[]"), 22


def endpoint(url: str) -> tuple[str, int]:
    """The host and port of a rest:, s3: or sftp: repository URL ("", 0 for other forms)."""
    scheme, _, rest = url.partition(":")
    if scheme == "sftp":
        with contextlib.suppress(ValueError):
            return sftp_login(url)[1:]
        return "", 0
    if scheme not in ("rest", "s3"):
        return "", 0
    parsed = urllib.parse.urlsplit(rest)
    return parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)


# --- restic ----------------------------------------------------------------------------------------


class Restic:
    def __init__(self, cfg: dict[str, Any], repository: str | None = None, env: dict[str, str] | None = None) -> None:
        """restic on the repository (the primary one unless `repository` with its credential `env`)."""
        self.cfg = cfg
        url = repository or cfg["repository"]
        self.url = url
        # Named in every message and in the status record: never with credentials in it.
        self.repository = redact(url)
        self.env = {
            **os.environ,
            **(read_env_file(Path(cfg["env_file"])) if env is None else env),
            "RESTIC_REPOSITORY": url,
            "RESTIC_PASSWORD_FILE": cfg["password_file"],
            "RESTIC_CACHE_DIR": cfg["cache_dir"],
        }
        # Another restic (a prune from the backup server, a copy) may hold the lock for a while.
        self.base = ["restic", "--retry-lock", "10m"]
        if cfg.get("cacert"):
            self.base += ["--cacert", cfg["cacert"]]
        if cfg.get("ssh_config"):
            # SFTP: restic's ssh reads SAMS's config (the backup key, the pinned host key, no prompts).
            self.base += ["-o", f"sftp.args=-F {cfg['ssh_config']}"]

    def run(
        self, *args: str, check: bool = True, capture: bool = True, stdout: Any = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.base, *args],
            env=self.env,
            text=True,
            stdout=stdout if stdout is not None else (subprocess.PIPE if capture else None),
            stderr=subprocess.PIPE,
            check=False,
        )
        if check and proc.returncode != 0:
            raise Failure(self.explain(proc, args[0]))
        return proc

    def explain(self, proc: subprocess.CompletedProcess[str], what: str) -> str:
        err = " ".join((proc.stderr or "").strip().splitlines()[-3:])
        if proc.returncode == RESTIC_WRONG_PASSWORD:
            return f"restic {what}: wrong repository password for {self.repository} ({err})"
        if proc.returncode == RESTIC_NO_REPOSITORY:
            return f"restic {what}: no repository at {self.repository} ({err})"
        return f"restic {what} failed on {self.repository} (exit {proc.returncode}): {err}"

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout or "null")

    def reach(self, tries: int = 3, wait: float = 10.0) -> None:
        """Fail at once, naming the repository, when its server cannot be reached: restic itself retries
        a refused or unanswered connection for up to 15 minutes before it gives up."""
        host, port = endpoint(self.url)
        if not host:
            return
        error: OSError | None = None
        for attempt in range(tries):
            try:
                socket.create_connection((host, port), timeout=10).close()
                error = None
                break
            except OSError as exc:
                error = exc
                if attempt + 1 < tries:
                    time.sleep(wait)
        if error is None:
            if self.url.startswith("sftp:"):
                self.ssh_login()
            return
        raise Failure(f"cannot reach the repository {self.repository} ({host}:{port}): {error}")

    def ssh_login(self) -> None:
        """Log in to an SFTP server as restic's ssh will and start its sftp subsystem: fail naming the
        repository when the host key is not the pinned one or the server refuses the host's key (restic
        itself often exits before ssh's own reason reaches its output)."""
        user, host, port = sftp_login(self.url)
        config = ["-F", self.cfg["ssh_config"]] if self.cfg.get("ssh_config") else []
        argv = ["ssh", *config, "-p", str(port), f"{user}@{host}", "-s", "sftp"]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as exc:
            raise Failure(f"the SFTP server of {self.repository} did not answer a login in 120 s") from exc
        if proc.returncode != 0:
            raise Failure(ssh_refusal(self.repository, proc.stderr))

    def ensure_repository(self) -> bool:
        """Open the repository, or create it where none exists yet; True if it was created."""
        self.reach()
        proc = self.run("cat", "config", check=False)
        if proc.returncode == 0:
            return False
        if proc.returncode != RESTIC_NO_REPOSITORY:
            raise Failure(self.explain(proc, "cat config"))
        self.run("init")
        return True

    def snapshots(self, *tags: str) -> list[dict[str, Any]]:
        self.reach(tries=1)  # every restore starts here: say at once that the server is not there
        args = ["snapshots", "--tag", ",".join((TAG, *tags))]
        found = self.json(*args) or []
        return sorted(found, key=lambda s: parse_time(s["time"]))

    def backup(self, *args: str) -> dict[str, Any]:
        """restic backup --json; its summary message (snapshot_id, data_added, ...)."""
        proc = self.run("backup", "--json", *args)
        summary: dict[str, Any] = {}
        for line in proc.stdout.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(line)
                if message.get("message_type") == "summary":
                    summary = message
        if not summary.get("snapshot_id"):
            raise Failure(f"restic backup to {self.repository} made no snapshot: {proc.stderr.strip()[-300:]}")
        return summary


def ssh_refusal(repository: str, stderr: str) -> str:
    """What a failed ssh login to an SFTP repository's server means, and what to do about it."""
    said = " ".join(stderr.strip().splitlines()[-2:])
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return (
            f"the SFTP server of {repository} did not show the pinned host key (sams:backup.sftpHostKey): "
            f"no snapshot goes to a server that may not be the one named ({said})"
        )
    if "Permission denied" in stderr:
        return (
            f"the SFTP server of {repository} refused the host's key: add the stack output "
            f"backup.sshPublicKey to that login's authorized_keys ({said})"
        )
    return f"cannot log in to the SFTP server of {repository}: {said}"


# --- the nightly run -----------------------------------------------------------------------------------


def postgres_dump_command(cfg: dict[str, Any]) -> list[str]:
    """A base backup as one tar on stdout (WAL fetched into it): restorable on its own, and the start of
    point-in-time recovery with the archived WAL after it."""
    pg = cfg["postgres"]
    return [
        "docker", "exec", pg["container"],
        "pg_basebackup", "-U", pg["superuser"], "-D", "-", "-F", "tar", "-X", "fetch", "--checkpoint=fast",
    ]  # fmt: skip


def prunable_segments(names: list[str]) -> list[str]:
    """WAL files older than the newest base backup's start (its .backup label): a snapshot made after
    that base backup already holds them. Timeline .history files are always kept."""
    labels = sorted(m.group(1) for n in names if (m := BACKUP_LABEL.match(n)))
    if not labels:
        return []
    newest = labels[-1]
    old = [n for n in names if SEGMENT.match(n) and n < newest]
    old += [n for n in names if (m := BACKUP_LABEL.match(n)) and m.group(1) < newest]
    return sorted(old)


def check_args(cfg: dict[str, Any], today: dt.date) -> list[str]:
    if today.strftime("%a") == cfg["read_data_on"]:
        return ["check", f"--read-data-subset={cfg['read_data_subset']}"]
    return ["check"]


def write_status(cfg: dict[str, Any], record: dict[str, Any]) -> None:
    previous = read_status(cfg)
    if record["result"] != "ok":
        record["last_success"] = previous.get("last_success")
        record["last_success_snapshots"] = previous.get("last_success_snapshots")
    if "copy" in previous:
        record["copy"] = previous["copy"]  # the second copy's last run (run_copy)
    _write_record(cfg, record)


def _write_record(cfg: dict[str, Any], record: dict[str, Any]) -> None:
    path = Path(cfg["status_file"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.chmod(0o644)  # no secret in it; the doctor and monitoring read it
    tmp.replace(path)


def read_status(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(json.loads(Path(cfg["status_file"]).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def run_backup(cfg: dict[str, Any]) -> dict[str, Any]:
    restic = Restic(cfg)
    started = now()
    run_id = started.strftime("%Y%m%dT%H%M%SZ")
    record: dict[str, Any] = {"started": iso(started), "repository": restic.repository, "run": run_id}
    steps: list[str] = []
    try:
        created = restic.ensure_repository()
        steps.append("created the repository" if created else "opened the repository")
        # A run killed earlier leaves its lock behind; unlock removes only stale ones.
        restic.run("unlock")
        tags = ["--tag", f"{TAG},run:{run_id}", "--host", cfg["hostname"]]
        # The dump first: --stdin-from-command fails the snapshot (and the run) when the dump fails.
        db = restic.backup(
            *tags, "--tag", "postgres", "--stdin-filename", BASE_TAR, "--stdin-from-command", "--",
            *postgres_dump_command(cfg),
        )  # fmt: skip
        paths = [p for p in cfg["paths"] if Path(p).exists()]
        excludes = [a for e in cfg["excludes"] for a in ("--exclude", e)]
        files = restic.backup(*tags, "--tag", "files", *excludes, *paths)
        archive = Path(cfg["postgres"]["wal_archive"])
        pruned = prunable_segments(sorted(os.listdir(archive))) if archive.is_dir() else []
        for name in pruned:
            (archive / name).unlink()
        steps.append(f"removed {len(pruned)} archived WAL files the snapshot holds")
        if cfg["forget"]:
            keep = cfg["keep"]
            # Grouped by host and paths: the database's snapshots and the files' are kept apart, and the
            # per-run tag (run:<time>) must not make every snapshot a group of its own.
            forget = restic.run(
                "forget", "--tag", TAG, "--group-by", "host,paths", "--prune",
                "--keep-daily", str(keep["daily"]), "--keep-weekly", str(keep["weekly"]),
                "--keep-monthly", str(keep["monthly"]), check=False,
            )  # fmt: skip
            # A server that refuses deletes answers 403; restic forget alone even exits 0 then.
            if "unable to remove" in forget.stderr or "403 Forbidden" in forget.stderr:
                raise Failure(
                    f"restic forget could not delete old snapshots on {restic.repository} (the server refuses "
                    "deletes: an append-only credential?): set sams:backup.forget to false and prune on the "
                    "backup server (docs/backup_targets.md)"
                )
            if forget.returncode != 0:
                raise Failure(restic.explain(forget, "forget"))
            steps.append("applied the retention")
        check = check_args(cfg, started.date())
        record["check"] = {"result": "failed", "args": check[1:]}
        restic.run(*check)
        record["check"]["result"] = "ok"
        finished = now()
        snapshots = {"postgres": db["snapshot_id"], "files": files["snapshot_id"]}
        record.update(
            result="ok",
            message="; ".join(steps),
            finished=iso(finished),
            duration_s=round((finished - started).total_seconds(), 1),
            snapshots=snapshots,
            bytes_added=int(db.get("data_added", 0)) + int(files.get("data_added", 0)),
            files=int(files.get("total_files_processed", 0)),
            bytes_total=int(db.get("total_bytes_processed", 0)) + int(files.get("total_bytes_processed", 0)),
            last_success=iso(finished),
            last_success_snapshots=snapshots,
        )
    except Failure as exc:
        finished = now()
        record.update(
            result="failed",
            message=str(exc),
            finished=iso(finished),
            duration_s=round((finished - started).total_seconds(), 1),
        )
    record.update(children_usage())
    write_status(cfg, record)
    return record


def children_usage() -> dict[str, float]:
    """What the run's programs (restic, its dump command) cost: CPU seconds, and the peak resident
    memory of the largest of them (the kernel's ru_maxrss, in KiB on Linux)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


# --- the second copy ---------------------------------------------------------------------------------

REST_LOGIN = ("RESTIC_REST_USERNAME", "RESTIC_REST_PASSWORD")


def with_login(url: str, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A repository and the environment its credential needs when two repositories meet in one
    restic: a rest-server's login moves into its URL (the environment has room for one), an S3
    key stays in the environment (settings refuse two S3 repositories)."""
    if url.startswith("rest:") and env.get(REST_LOGIN[0]):
        user, password = (urllib.parse.quote(env[k], safe="") for k in REST_LOGIN)
        scheme, rest = url[len("rest:") :].split("://", 1)
        return f"rest:{scheme}://{user}:{password}@{rest}", {}
    return url, {k: v for k, v in env.items() if k not in REST_LOGIN}


def run_copy(cfg: dict[str, Any]) -> dict[str, Any]:
    """restic copy of every SAMS snapshot the second repository lacks (sams-backup-copy.timer)."""
    copy = cfg["copy"]
    source, source_env = with_login(cfg["repository"], read_env_file(Path(cfg["env_file"])))
    target, target_env = with_login(copy["repository"], read_env_file(Path(copy["env_file"])))
    restic = Restic(cfg, target, {**source_env, **target_env})
    started = now()
    record: dict[str, Any] = {"started": iso(started), "repository": restic.repository}
    from_repo = ["--from-repo", source, "--from-password-file", cfg["password_file"]]
    try:
        restic.reach()
        Restic(cfg, source, source_env).reach()
        proc = restic.run("cat", "config", check=False)
        if proc.returncode == RESTIC_NO_REPOSITORY:
            # The same chunker parameters as the source: its chunks deduplicate in the copy too.
            restic.run("init", *from_repo, "--copy-chunker-params")
        elif proc.returncode != 0:
            raise Failure(restic.explain(proc, "cat config"))
        restic.run("copy", *from_repo, "--tag", TAG)
        restic.run("check")
        copied = restic.snapshots()
        record.update(result="ok", message=f"{len(copied)} snapshots in the copy", snapshots=len(copied))
    except Failure as exc:
        record.update(result="failed", message=str(exc))
    record["finished"] = iso(now())
    status = read_status(cfg)
    status["copy"] = record
    _write_record(cfg, status)
    return record


# --- restores --------------------------------------------------------------------------------------------


def pick(snapshots: list[dict[str, Any]], wanted: str | None, what: str, repository: str) -> dict[str, Any]:
    if not snapshots:
        raise Failure(f"no {what} snapshot in {repository}")
    if wanted in (None, "latest"):
        return snapshots[-1]
    for snap in snapshots:
        if snap["id"].startswith(str(wanted)) or snap.get("short_id") == wanted:
            return snap
    raise Failure(f"no {what} snapshot {wanted} in {repository}")


def run_tag(snapshot: dict[str, Any]) -> str | None:
    return next((t for t in snapshot.get("tags", []) if t.startswith("run:")), None)


def partner(snapshot: dict[str, Any], others: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """The snapshot of the other kind made by the same run."""
    tag = run_tag(snapshot)
    for other in others:
        if tag and tag in other.get("tags", []):
            return other
    raise Failure(f"snapshot {snapshot['short_id']} has no {what} snapshot from the same run ({tag})")


def stamp() -> str:
    return now().strftime("%Y%m%dT%H%M%SZ")


def move_aside(path: Path, when: str) -> Path | None:
    if not path.exists():
        return None
    aside = path.with_name(f"{path.name}.before-{when}")
    path.rename(aside)
    return aside


def restore_in_place(restic: Restic, snapshot: str, path: Path, when: str) -> None:
    """Restore one snapshot path to where it was. It is staged beside its destination, so the final
    rename never crosses filesystems: /var/mail is often a volume of its own (a cloud block device),
    and a rename from a staging directory elsewhere fails with EXDEV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".sams-restore-{path.name}-{when}"
    staging.mkdir()
    try:
        restic.run("restore", snapshot, "--target", str(staging), "--include", str(path))
        src = staging / str(path).lstrip("/")
        if src.exists():
            src.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["systemctl", *args], text=True, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise Failure(f"systemctl {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def maildir_key(name: str) -> str:
    """A Maildir message's unique part: its name without the ':2,<flags>' info."""
    return name.split(":2,", 1)[0].split(",S=", 1)[0]


def restore_mailbox(cfg: dict[str, Any], address: str, folder: str | None, wanted: str | None) -> dict[str, Any]:
    local, sep, domain = address.partition("@")
    if not sep or not local or "/" in address:
        raise Failure(f"not a mailbox address: {address!r}")
    if folder is not None and (folder.startswith(".") or "/" in folder):
        raise Failure(f"not a folder name: {folder!r} (give it as the mail client shows it, e.g. Sent or Work.2025)")
    restic = Restic(cfg)
    snap = pick(restic.snapshots("files"), wanted, "files", restic.repository)
    vm = cfg["vmail"]
    maildir = Path(vm["root"]) / domain / local / vm["maildir"]
    sub = maildir / f".{folder}" if folder and folder != "INBOX" else maildir
    staging = Path(cfg["staging_dir"]) / f"mailbox-{stamp()}"
    staging.mkdir(parents=True)
    try:
        restic.run("restore", snap["id"], "--target", str(staging), "--include", str(sub))
        source = staging / str(sub).lstrip("/")
        if not source.is_dir():
            raise Failure(f"snapshot {snap['short_id']} ({snap['time'][:19]}) has no {sub}")
        restored = kept = 0
        expected: dict[str, int] = {}  # IMAP mailbox -> the messages its Maildir holds now
        # INBOX alone is the Maildir's own cur/new/tmp; other folders are its .Name subdirectories.
        dirs = [source] if sub != maildir or folder == "INBOX" else [source, *sorted(source.glob(".*"))]
        for mdir in dirs:
            target = sub if mdir == source else sub / mdir.name
            name = target.name[1:] if target != maildir else "INBOX"
            present = {
                maildir_key(p.name) for d in ("cur", "new") if (target / d).is_dir() for p in (target / d).iterdir()
            }
            for d in ("cur", "new", "tmp"):
                (target / d).mkdir(parents=True, exist_ok=True)
                os.chown(target / d, vm["uid"], vm["uid"])
            os.chown(target, vm["uid"], vm["uid"])
            for d in ("cur", "new"):
                for msg in sorted((mdir / d).iterdir()) if (mdir / d).is_dir() else []:
                    if maildir_key(msg.name) in present:
                        kept += 1
                        continue
                    dest = target / "cur" / msg.name if ":2," in msg.name else target / d / msg.name
                    shutil.copy2(msg, dest)
                    os.chown(dest, vm["uid"], vm["uid"])
                    restored += 1
            expected[name] = sum(1 for d in ("cur", "new") for _ in (target / d).iterdir())
        resync(address, "*" if folder is None else folder, expected)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"mailbox": address, "folder": folder, "snapshot": snap["short_id"], "time": snap["time"],
            "restored": restored, "already_there": kept}  # fmt: skip


def resync(address: str, mailbox: str, expected: dict[str, int], tries: int = 10) -> None:
    """doveadm force-resync until Dovecot's index counts every message file: a scan in the same second
    as the last change of cur/ can miss files (Dovecot trusts the directory's mtime to the second)."""
    counts: dict[str, int] = {}
    for _ in range(tries):
        time.sleep(1.05 - time.time() % 1)  # into the next second after the last file was written
        proc = subprocess.run(["doveadm", "force-resync", "-u", address, mailbox], capture_output=True, text=True)
        if proc.returncode != 0:
            raise Failure(f"doveadm force-resync -u {address} {mailbox}: {proc.stderr.strip()}")
        for name in expected:
            status = subprocess.run(
                ["doveadm", "-f", "flow", "mailbox", "status", "-u", address, "messages", name],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            found = re.search(r"messages=(\d+)", status.stdout)
            counts[name] = int(found.group(1)) if found else -1
        if all(counts[n] >= want for n, want in expected.items()):
            return
    raise Failure(
        f"Dovecot counts {counts} messages in {address}'s folders after the restore, the files are {expected}"
    )


def _restore_wal(restic: Restic, cfg: dict[str, Any], snapshots: list[dict[str, Any]]) -> int:
    """Copy the archived WAL of these files snapshots into the live archive, next to what is there
    (a segment's name fixes its content: one already present is the same)."""
    archive = Path(cfg["postgres"]["wal_archive"])
    archive.mkdir(parents=True, exist_ok=True)
    added = 0
    for snap in snapshots:
        staging = Path(cfg["staging_dir"]) / f"wal-{snap['short_id']}"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            restic.run("restore", snap["id"], "--target", str(staging), "--include", str(archive))
            src = staging / str(archive).lstrip("/")
            for f in sorted(src.iterdir()) if src.is_dir() else []:
                dest = archive / f.name
                if not dest.exists():
                    shutil.copy2(f, dest)
                    os.chown(dest, cfg["postgres"]["uid"], cfg["postgres"]["uid"])
                    added += 1
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return added


def _unpack_base(restic: Restic, cfg: dict[str, Any], snap: dict[str, Any], data: Path) -> None:
    pg = cfg["postgres"]
    data.mkdir(mode=0o700)
    staging = Path(cfg["staging_dir"]) / f"pg-{snap['short_id']}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        tar_path = staging / BASE_TAR
        with open(tar_path, "wb") as out:
            restic.run("dump", snap["id"], f"/{BASE_TAR}", stdout=out)
        with tarfile.open(tar_path) as tar:
            tar.extractall(data, filter="fully_trusted")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for root, dirs, files in os.walk(data):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), pg["uid"], pg["uid"])
    os.chown(data, pg["uid"], pg["uid"])


RECOVERY_BEGIN = "# sams-backup recovery (removed when recovery is done)"


def _recovery_settings(target: dt.datetime) -> str:
    """Where recovery stops (restore_command is always set, by the database unit)."""
    stop = target.strftime("%Y-%m-%d %H:%M:%S")
    return f"{RECOVERY_BEGIN}\nrecovery_target_time = '{stop}+00'\nrecovery_target_action = 'promote'\n"


def _psql(cfg: dict[str, Any], sql: str) -> str:
    pg = cfg["postgres"]
    proc = subprocess.run(
        ["docker", "exec", pg["container"], "psql", "-U", pg["superuser"], "-At", "-c", sql],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise Failure(f"psql: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _start_recovered(cfg: dict[str, Any], data: Path, timeout: float = 600) -> None:
    """Start the database unit on a data directory set up for recovery; return once it is promoted and
    the recovery settings are gone again."""
    pg = cfg["postgres"]
    systemctl("start", pg["unit"], check=False)  # the unit's readiness wait ends when recovery allows reads
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Failure):
            if _psql(cfg, "SELECT pg_is_in_recovery()") == "f":
                break
        if time.monotonic() > deadline:
            raise Failure(f"PostgreSQL did not finish recovery in {timeout:.0f} s: journalctl -t {pg['container']}")
        time.sleep(1)
    auto = data / "postgresql.auto.conf"
    text = auto.read_text()
    if RECOVERY_BEGIN in text:
        auto.write_text(text.split(RECOVERY_BEGIN, 1)[0])
    # Postfix's and Dovecot's processes that met the stopped database keep failing their lookups
    # until they end; a reload gives every one a fresh connection.
    for unit in cfg["mail_units"]:
        if systemctl("is-active", "-q", unit, check=False).returncode == 0:
            systemctl("reload", unit, check=False)


def restore_postgres(
    cfg: dict[str, Any], target: dt.datetime | None, wanted: str | None = None, *, start: bool = True
) -> dict[str, Any]:
    """PostgreSQL from the newest base backup before `target` and the WAL after it, up to `target`
    (None: to the end of the archived WAL). The directory it replaces is moved aside. `start` False
    (a new host, whose database unit does not exist yet): only prepared; recovery runs when the
    database step first starts the unit, which returns once it is done."""
    restic = Restic(cfg)
    pg = cfg["postgres"]
    bases = restic.snapshots("postgres")
    if wanted is not None:
        base = pick(bases, wanted, "postgres", restic.repository)
    elif target is not None:
        before = [s for s in bases if parse_time(s["time"]) <= target]
        if not before:
            raise Failure(f"no base backup before {iso(target)} in {restic.repository}")
        base = before[-1]
    else:
        base = pick(bases, None, "postgres", restic.repository)
    files = [s for s in restic.snapshots("files") if parse_time(s["time"]) >= parse_time(base["time"])]
    # The WAL from the base backup on: in the files snapshots made after it, and in the live archive.
    added = _restore_wal(restic, cfg, files)
    data = Path(pg["data_dir"])
    if start:
        systemctl("stop", pg["unit"])
    aside = move_aside(data, stamp())
    _unpack_base(restic, cfg, base, data)
    (data / "recovery.signal").touch()
    os.chown(data / "recovery.signal", pg["uid"], pg["uid"])
    if target is not None:
        with open(data / "postgresql.auto.conf", "a") as auto:
            auto.write(_recovery_settings(target))
    if start:
        _start_recovered(cfg, data)
    return {"base": base["short_id"], "base_time": base["time"], "target": iso(target) if target else "end of WAL",
            "wal_restored": added, "moved_aside": str(aside) if aside else None}  # fmt: skip


def unit_exists(unit: str) -> bool:
    return bool(systemctl("list-unit-files", "--no-legend", unit, check=False).stdout.strip())


def host_has_mail(cfg: dict[str, Any]) -> bool:
    vmail = Path(cfg["vmail"]["root"])
    data = Path(cfg["postgres"]["data_dir"])
    return (vmail.is_dir() and any(vmail.iterdir())) or (data / "PG_VERSION").exists()


def restore_host(cfg: dict[str, Any], wanted: str | None, if_new: bool) -> dict[str, Any]:
    """Everything a snapshot holds back in place: the files, then PostgreSQL to the end of the WAL
    the files snapshot holds. Postfix, Dovecot and Radicale are stopped meanwhile (on a new host they
    do not run yet); what is replaced is moved aside."""
    marker = Path(cfg["restored_marker"])
    if if_new and (marker.exists() or host_has_mail(cfg)):
        return {"restored": False, "why": "this host already has mail (or was restored): nothing restored"}
    restic = Restic(cfg)
    files = pick(restic.snapshots("files"), wanted, "files", restic.repository)
    base = partner(files, restic.snapshots("postgres"), "postgres")
    # Radicale (data_units) too: it writes into a snapshot path.
    running = [*cfg["mail_units"], *cfg.get("data_units", [])]
    units = [u for u in running if systemctl("is-active", "-q", u, check=False).returncode == 0]
    for unit in units:
        systemctl("stop", unit)
    when = stamp()
    aside = [str(a) for p in cfg["paths"] if (a := move_aside(Path(p), when))]
    for p in cfg["paths"]:
        restore_in_place(restic, files["id"], Path(p), when)
    db = restore_postgres(cfg, None, base["id"], start=unit_exists(cfg["postgres"]["unit"]))
    for unit in units:
        systemctl("start", unit)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"files": files["short_id"], "postgres": base["short_id"], "at": iso(now())}) + "\n")
    return {"restored": True, "files": files["short_id"], "time": files["time"], "postgres": db, "moved_aside": aside}


# --- CLI ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sams-backup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run")
    sub.add_parser("copy")
    sub.add_parser("status")
    snaps = sub.add_parser("snapshots")
    snaps.add_argument("--copy", action="store_true", help="the second copy's")
    check = sub.add_parser("check")
    check.add_argument("--read-data", action="store_true")
    mbox = sub.add_parser("restore-mailbox")
    mbox.add_argument("address")
    mbox.add_argument("--folder")
    mbox.add_argument("--snapshot")
    pg = sub.add_parser("restore-postgres")
    when = pg.add_mutually_exclusive_group(required=True)
    when.add_argument("--time", help="UTC, 'YYYY-MM-DD HH:MM:SS'")
    when.add_argument("--latest", action="store_true", help="to the end of the archived WAL")
    host = sub.add_parser("restore-host")
    host.add_argument("--snapshot")
    host.add_argument("--if-new", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_config()
    try:
        if args.command == "run":
            record = run_backup(cfg)
            print(json.dumps(record, sort_keys=True))
            if record["result"] != "ok":
                print(f"sams-backup: {record['message']}", file=sys.stderr)
                return 1
            return 0
        if args.command == "copy":
            if not cfg.get("copy"):
                print("sams-backup: no second copy is configured (sams:backup.copyTo)", file=sys.stderr)
                return 2
            record = run_copy(cfg)
            print(json.dumps(record, sort_keys=True))
            if record["result"] != "ok":
                print(f"sams-backup: {record['message']}", file=sys.stderr)
                return 1
            return 0
        if args.command == "status":
            print(json.dumps(read_status(cfg), indent=1, sort_keys=True))
            return 0
        if args.command == "check":
            restic = Restic(cfg)
            restic.reach()
            # restic check does not see a killed run's lock as stale; unlock (stale ones only) does.
            restic.run("unlock")
            proc = restic.run("check", *(["--read-data"] if args.read_data else []))
            print(proc.stdout.strip())
            return 0
        if args.command == "snapshots":
            if args.copy:
                target, target_env = with_login(cfg["copy"]["repository"], read_env_file(Path(cfg["copy"]["env_file"])))
                print(json.dumps(Restic(cfg, target, target_env).snapshots(), indent=1))
            else:
                print(json.dumps(Restic(cfg).snapshots(), indent=1))
            return 0
        if args.command == "restore-mailbox":
            result = restore_mailbox(cfg, args.address, args.folder, args.snapshot)
        elif args.command == "restore-postgres":
            try:
                until: dt.datetime | None = None if args.latest else parse_time(args.time)
            except ValueError:
                print(f"sams-backup: --time {args.time!r} is not 'YYYY-MM-DD HH:MM:SS' (UTC)", file=sys.stderr)
                return 2
            result = restore_postgres(cfg, until)
        else:
            result = restore_host(cfg, args.snapshot, args.if_new)
    except Failure as exc:
        print(f"sams-backup: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
