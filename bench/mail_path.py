"""The mail path's figures (issue: mail end to end): memory, CPU per message, latency, throughput.

    sudo .venv/bin/python -m bench.mail_path [--live]

Boots a lab (refused if one runs; `--live` measures the running one instead), applies every
step, then with the e2e tests' world (DNS for the lab internet, known passwords):

- idle PSS of the mail stack (Postfix, Dovecot, OpenDKIM, Rspamd, Redis, dockerd, containerd and
  the PostgreSQL container) and of the whole host container, 10 s and 110 s after the last message;
- CPU ms per inbound (25) and per submitted (587, STARTTLS + AUTH) message: the container's cgroup
  v2 CPU (every process, exited ones included) around N messages, idle rate removed, by unit;
- delivery latency (SMTP "250 queued" to the file in the Maildir, seen from the root namespace
  through the container's tree) at concurrency 1 and 16, and messages per second at 16;
- IMAP LOGIN+SELECT over IMAPS;
- the same inbound load against Postfix's smtp-sink on the host (the raw SMTP limit of this
  machine and path) and against SAMS with its milters off, as ratios.
Clients run in sams-inet, one connection per message, plain SMTP on 25 (smtp-sink has no TLS).
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import shutil
import smtplib
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.fresh import fresh_lab, lab_object
from bench.record import record
from lab import program
from lab.dns import SENDER_DOMAIN
from lab.hostcmd import sh
from lab.netclient import message, tls_context
from lab.session import Lab
from lab.spec import StatePaths, state_paths
from lab.world import World, world

SINK_PORT = 2525
DEADLINE = 120.0  # seconds, for any one load or wait
QUIET = 110  # seconds without mail before the second memory figure
IN_CREATE, IN_MOVED_TO = 0x100, 0x80  # <sys/inotify.h>


# --- the container's cgroup, seen from the root namespace ---------------------------------------------
#
# CPU comes from cgroup v2's cpu.stat, which counts every process of a cgroup, alive or exited, from
# the moment it ran: summing /proc/<pid>/stat of the processes alive at the start of a window both
# misses the children still alive at its end and charges the whole life of a child that exits inside
# it (Postfix's smtpd, cleanup and lmtp live for max_idle = 100 s, so the window after a warm-up was
# billed for the warm-up: 99 ms "per message" where the batches measured ~35).


def _cgroup2_mount() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    raise SystemExit("no cgroup2 mount: the bench reads the container's CPU from cgroup v2")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


class ContainerCgroup:
    """The lab host's cgroup (systemd-nspawn's payload) and its systemd units below it."""

    def __init__(self, nspawn_pid: int) -> None:
        init = next(iter(_children(nspawn_pid)), None)
        if init is None:
            raise SystemExit(f"systemd-nspawn (pid {nspawn_pid}) has no container init")
        own = Path(f"/proc/{init}/cgroup").read_text().splitlines()
        path = next(line.split(":", 2)[2] for line in own if line.startswith("0::"))
        if not path.endswith("/init.scope"):
            raise SystemExit(f"container init {init} is in {path}, not a systemd init.scope")
        self.root = _cgroup2_mount() / path.removesuffix("/init.scope").lstrip("/")

    @staticmethod
    def _usec(directory: Path) -> int:
        stat = (directory / "cpu.stat").read_text().split()
        return int(stat[stat.index("usage_usec") + 1])

    def usage_usec(self) -> int:
        return self._usec(self.root)

    def units(self) -> dict[str, int]:
        """CPU µs of every unit in the container's system.slice, by unit name. Scopes that share a
        name add up: a replaced PostgreSQL container can leave its old, empty docker-<id>.scope
        behind, and letting it stand for "postgres (container)" read the live one's CPU as 0."""
        out: dict[str, int] = {}
        for unit in sorted((self.root / "system.slice").iterdir()):
            if (unit / "cpu.stat").exists():
                name = _unit_name(unit.name)
                out[name] = out.get(name, 0) + self._usec(unit)
        return out

    def pids(self) -> dict[str, list[int]]:
        """Every process of the container, by the unit it runs in ("other" outside system.slice)."""
        out: dict[str, list[int]] = {}
        for procs in self.root.rglob("cgroup.procs"):
            rel = procs.parent.relative_to(self.root).parts
            name = _unit_name(rel[1]) if len(rel) > 1 and rel[0] == "system.slice" else "other"
            out.setdefault(name, []).extend(int(p) for p in procs.read_text().split())
        return out


def _unit_name(cgroup: str) -> str:
    """The PostgreSQL container's scope (docker-<id>.scope) is named for what it is."""
    return "postgres (container)" if cgroup.startswith("docker-") and cgroup.endswith(".scope") else cgroup


# The units that are the mail stack, Rspamd's resolver included (the rest of the host: systemd,
# journald, sshd, fail2ban, unattended-upgrades, nginx for MTA-STS, and the lab's wireguard-go,
# which a VPS runs in its kernel).
STACK = (
    "postfix.service", "dovecot.service", "opendkim.service", "rspamd.service", "redis-server.service",
    "postgres (container)", "docker.service", "containerd.service", "sams-postgres.service", "unbound.service",
)  # fmt: skip


def pss_kib(pids: list[int], field: str = "Pss") -> int:
    """PSS of `pids` in KiB; `field` "Pss_Anon" or "Pss_File" for its private-memory or mapped-file part."""
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith(f"{field}:"))
    return total


# --- load (runs in the client child in sams-inet) -----------------------------------------------------


def _one(
    host: str, port: int, cafile: str, login: tuple[str, str] | None, sender: str, rcpt: str, data: bytes
) -> float:
    if login:
        with smtplib.SMTP(host, port, timeout=60, local_hostname="laptop.example") as client:
            client.starttls(context=tls_context(cafile))
            client.login(*login)
            client.sendmail(sender, [rcpt], data)
    else:
        with smtplib.SMTP(host, port, timeout=60, local_hostname=f"mx.{SENDER_DOMAIN}") as client:
            client.sendmail(sender, [rcpt], data)
    return time.monotonic()


def load(
    host: str, port: int, cafile: str, login: tuple[str, str] | None, sender: str, rcpt: str,
    tags: list[str], concurrency: int,
) -> dict[str, Any]:  # fmt: skip
    """Send one message per tag, `concurrency` sessions at a time; when each was accepted."""
    start = time.monotonic()
    done: dict[str, float] = {}
    errors: list[str] = []
    with ThreadPoolExecutor(concurrency) as pool:
        futures = {
            tag: pool.submit(_one, host, port, cafile, login, sender, rcpt, message(sender, rcpt, tag, size=1500))
            for tag in tags
        }
        for tag, future in futures.items():
            try:
                done[tag] = future.result(timeout=max(1.0, DEADLINE - (time.monotonic() - start)))
            except Exception as exc:
                errors.append(f"{tag}: {exc!r}")
    return {"start": start, "end": time.monotonic(), "done": done, "errors": errors}


def imap_logins(host: str, cafile: str, login: tuple[str, str], count: int) -> list[float]:
    import imaplib

    times: list[float] = []
    deadline = time.monotonic() + DEADLINE
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(cafile), timeout=30) as imap:
            t0 = time.monotonic()
            imap.login(*login)
            imap.select("INBOX")
            times.append(time.monotonic() - t0)
    return times


# --- watching the Maildir from the root namespace -----------------------------------------------------


class MaildirWatch:
    """First-seen time of every new message file, keyed by the Subject tag in its headers.

    inotify, not polling: Dovecot renames each message into new/ (IN_MOVED_TO), and the kernel says
    so. A listdir every millisecond of a new/ with thousands of files cost a core that the mail
    stack needed at c=16, and billed the watcher's CPU to the delivery latency it was measuring.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: dict[str, float] = {}
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"inotify_add_watch {directory}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._fd], [], [], 0.1)[0]:
                continue
            now = time.monotonic()
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(buf):
                _wd, _mask, _cookie, size = struct.unpack_from("iIII", buf, offset)
                name = buf[offset + 16 : offset + 16 + size].rstrip(b"\0").decode()
                offset += 16 + size
                self._note(name, now)

    def _note(self, name: str, now: float) -> None:
        try:
            head = (self.directory / name).read_bytes()[:4096].decode(errors="replace")
        except OSError:
            return
        for line in head.splitlines():
            if line.startswith("Subject: "):
                self.seen.setdefault(line[9:].strip(), now)
                break

    def wait_for(self, tags: list[str], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not all(t in self.seen for t in tags) and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> MaildirWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._fd)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


# --- the run --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, w: World, paths: StatePaths) -> None:
        self.w = w
        self.lab = w.lab
        self.cg = ContainerCgroup(int(paths.nspawn_pid.read_text().strip()))
        self.inbox = paths.tree / "var/mail/vmail/sams.test/bob/Maildir/new"
        # The watch needs the directory: on a fresh host, opening the INBOX creates the Maildir.
        sh(self.lab, "doveadm mailbox status -u bob@sams.test messages INBOX")
        self.rows: list[tuple[str, str]] = []
        self.n = 0

    def tags(self, prefix: str, count: int) -> list[str]:
        self.n += count
        return [f"bench-{prefix}-{self.n}-{i}" for i in range(count)]

    def cpu(self) -> dict[str, int]:
        """CPU µs so far: the whole container ("total") and each of its units."""
        return {"total": self.cg.usage_usec(), **self.cg.units()}

    def idle_rate(self, seconds: float = 10.0) -> dict[str, float]:
        """Background CPU of the container and of each unit, µs per second."""
        before, t0 = self.cpu(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = self.cpu(), time.monotonic() - t0
        return {k: (after[k] - before.get(k, 0)) / elapsed for k in after}

    def send(self, port: int, count: int, concurrency: int, *, submit: bool = False) -> dict[str, Any]:
        tags = self.tags(f"{port}c{concurrency}", count)
        login = self.w.login("alice@sams.test") if submit else None
        sender = "alice@sams.test" if submit else f"someone@{SENDER_DOMAIN}"
        with MaildirWatch(self.inbox) as watch:
            result = self.w.inet(
                load, self.w.host, port, self.w.cafile, login, sender, "bob@sams.test", tags, concurrency,
                timeout=DEADLINE + 30,
            )  # fmt: skip
            if port != SINK_PORT:
                watch.wait_for(list(result["done"]))
        result["seen"] = dict(watch.seen)
        result["latency"] = [watch.seen[t] - d for t, d in result["done"].items() if t in watch.seen]
        result["lost"] = len([t for t in result["done"] if t not in watch.seen])
        return result

    def batch(
        self, port: int, count: int, *, submit: bool, settle: float
    ) -> tuple[dict[str, int], float, dict[str, Any]]:
        """One c=1 batch: CPU µs used by the container ("total") and each unit, the seconds it took
        (`settle` included: qmgr, LMTP and the milters finish the last message), the send result."""
        before, t0 = self.cpu(), time.monotonic()
        result = self.send(port, count, 1, submit=submit)
        time.sleep(settle)
        after, elapsed = self.cpu(), time.monotonic() - t0
        return {k: after[k] - before.get(k, 0) for k in after}, elapsed, result

    def cpu_ms_per_message(self, port: int, count: int, *, submit: bool) -> float:
        """Container CPU per message of one c=1 batch (idle not removed: only for the warm-up)."""
        used, _, result = self.batch(port, count, submit=submit, settle=1.0)
        return used["total"] / 1000 / max(len(result["done"]), 1)

    def warm_up(self, batch: int = 20, tries: int = 8) -> list[float]:
        """Inbound batches until the cost per message settles (within 15% of the batch before).

        A fresh host's Rspamd workers compile their rules' expressions on first use: measured here,
        the first 40 inbound messages cost ~140 ms CPU each in Rspamd alone, the next 40 ~10 ms. The
        figures are for a server in service, so that start-up cost is paid before measuring (and
        printed).
        """
        costs: list[float] = []
        for _ in range(tries):
            costs.append(self.cpu_ms_per_message(25, batch, submit=False))
            if len(costs) >= 2 and abs(costs[-1] - costs[-2]) <= 0.15 * costs[-2]:
                break
        return costs

    def cpu_per_message(
        self, label: str, port: int, count: int, *, submit: bool, idle: dict[str, float]
    ) -> dict[str, Any]:
        """CPU per message of a c=1 batch, idle removed: the whole host, the mail stack, each unit."""
        used, elapsed, result = self.batch(port, count, submit=submit, settle=2.0)
        ok = max(len(result["done"]), 1)
        per = {k: (v - idle.get(k, 0.0) * elapsed) / 1000 / ok for k, v in used.items()}
        stack = sum(v for k, v in per.items() if k in STACK)
        self.rows.append((f"CPU per {label} message, whole host (ms)", f"{per['total']:.1f}"))
        self.rows.append((f"CPU per {label} message, mail stack units (ms)", f"{stack:.1f}"))
        units = sorted(((v, k) for k, v in per.items() if k != "total" and v >= 0.5), reverse=True)
        self.rows.append(("  by unit (ms)", ", ".join(f"{k.removesuffix('.service')} {v:.1f}" for v, k in units)))
        self.rows.append((f"{label}: delivery p50 / p95 at c=1 (ms)", self.p5095(result)))
        return result

    def memory(self, when: str) -> None:
        """PSS of the mail stack (by unit) and of the whole host container, as rows."""
        by_unit = {unit: pss_kib(pids) for unit, pids in self.cg.pids().items()}
        stack = {u: k for u, k in by_unit.items() if u in STACK}
        self.rows.append(
            (f"idle PSS {when}: mail stack incl. Docker, PostgreSQL (MiB)", f"{sum(stack.values()) / 1024:.0f}")
        )
        by = ", ".join(f"{u.removesuffix('.service')} {k / 1024:.0f}" for u, k in sorted(stack.items()))
        self.rows.append(("  by unit (MiB)", by))
        self.rows.append((f"idle PSS {when}: whole host container (MiB)", f"{sum(by_unit.values()) / 1024:.0f}"))

    def p5095(self, result: dict[str, Any]) -> str:
        lat = result["latency"]
        note = (
            f" ({result['lost']} not seen, {len(result['errors'])} errors)"
            if result["lost"] or result["errors"]
            else ""
        )
        return f"{ms(pct(lat, 50))} / {ms(pct(lat, 95))}{note}"

    def accept_rate(self, result: dict[str, Any]) -> float:
        return len(result["done"]) / max(result["end"] - result["start"], 1e-6)


@contextmanager
def sink_and_port(lab: Lab) -> Iterator[None]:
    """smtp-sink on the host's public address, with a temporary firewall hole for it."""
    public = lab.spec.public_ipv4
    handle = sh(lab, f"nft -e -a insert rule inet sams input tcp dport {SINK_PORT} accept | grep -o 'handle [0-9]*'")
    pid = sh(lab, f"setsid smtp-sink -u postfix {public}:{SINK_PORT} 256 </dev/null >/dev/null 2>&1 & echo $!").strip()
    time.sleep(0.5)
    try:
        yield
    finally:
        sh(lab, f"kill {pid}", check=False)
        sh(lab, f"nft delete rule inet sams input {handle.strip()}", check=False)


@contextmanager
def milters_off(lab: Lab) -> Iterator[None]:
    saved = "/root/sams-bench-main.cf"
    off = "postconf -e smtpd_milters= non_smtpd_milters= originating_milters="
    sh(lab, f"cp -p /etc/postfix/main.cf {saved} && {off} && postfix reload")
    try:
        yield
    finally:
        sh(lab, f"cp -p {saved} /etc/postfix/main.cf && rm {saved} && postfix reload")


def measure(w: World, paths: StatePaths) -> list[tuple[str, str]]:
    b = Bench(w, paths)
    lab = w.lab
    # Warm up: postscreen's first-contact wait, Rspamd's maps and rule compilation, Dovecot's auth
    # and index processes.
    costs = b.warm_up()
    b.rows.append(("warm-up: CPU per inbound message, batches of 20 (ms)", " / ".join(f"{c:.0f}" for c in costs)))
    b.send(587, 2, 1, submit=True)
    time.sleep(10)
    b.memory("just after mail (10 s)")
    idle = b.idle_rate()
    b.rows.append(("idle CPU of the container (ms/s)", f"{idle['total'] / 1000:.1f}"))
    b.cpu_per_message("inbound (25)", 25, 100, submit=False, idle=idle)
    b.cpu_per_message("submitted (587)", 587, 60, submit=True, idle=idle)
    c16 = b.send(25, 200, 16)
    b.rows.append(("inbound: delivery p50 / p95 at c=16 (ms)", b.p5095(c16)))
    last = max(c16["seen"].values(), default=c16["end"])
    b.rows.append(
        ("inbound at c=16: delivered messages per second", f"{len(c16['latency']) / (last - c16['start']):.1f}")
    )
    logins = w.inet(imap_logins, w.host, w.cafile, w.login("bob@sams.test"), 30, timeout=DEADLINE + 30)
    b.rows.append(("IMAP LOGIN+SELECT p50 / p95 (ms)", f"{ms(pct(logins, 50))} / {ms(pct(logins, 95))}"))

    # The same c=16 load, accepted-messages-per-second, against the raw SMTP limit and no milters.
    sams = b.accept_rate(b.send(25, 200, 16))
    with milters_off(lab):
        time.sleep(1)
        bare = b.accept_rate(b.send(25, 200, 16))
    with sink_and_port(lab):
        sink_result = b.send(SINK_PORT, 200, 16)
        sink = b.accept_rate(sink_result)
    b.rows.append(("SMTP accepts/s at c=16: SAMS / no milters / smtp-sink", f"{sams:.0f} / {bare:.0f} / {sink:.0f}"))
    b.rows.append(("ratio SAMS : smtp-sink", f"{sams / sink:.2f}"))
    b.rows.append(("ratio SAMS : SAMS without milters", f"{sams / bare:.2f}"))
    if sink_result["errors"]:
        b.rows.append(("smtp-sink errors", str(len(sink_result["errors"]))))
    # Idle as a server is most of the day: the per-connection processes (smtpd, lmtp, quota-status,
    # PostgreSQL backends) have exited (Postfix's max_idle is 100 s, Dovecot's idle_kill 60 s).
    time.sleep(QUIET)
    b.memory(f"quiet ({QUIET} s after the last message)")
    return b.rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--live", action="store_true", help="measure the running lab (python -m lab up)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="samsbench-"))
    try:
        if args.live:
            paths = state_paths()
            lab = lab_object(paths, program.ApplyReport())
            with world(lab, tmp) as w:
                rows = measure(w, paths)
        else:
            paths = StatePaths(tmp / "lab")
            with fresh_lab(paths.root) as lab, world(lab, tmp) as w:
                rows = measure(w, paths)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes = (
        "Reference (hand-built Debian 12, no Docker): idle PSS ~97 MiB, 16 ms CPU per inbound message, "
        "22 ms per submitted, delivery p95 52-70 ms at c=16, IMAP LOGIN+SELECT p95 13-23 ms. "
        "Passwords: the stack's sams:users.passwordScheme (SHA512-CRYPT unless set); "
        "clients and server share this machine's cores."
    )
    record("Mail path (issue: mail end to end)", rows, notes)


if __name__ == "__main__":
    main()
