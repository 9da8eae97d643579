"""Backup figures (issue 20): a large mail store backed up to the lab's backup server and restored.

    sudo .venv/bin/python -m bench.backup [--mailboxes 5] [--per-mailbox 10000] [--size 42000]

Boots a lab (refused if one runs), applies every step with a mail list whose mailboxes have room
for the store, writes the store straight into the Maildirs on the host (`--mailboxes` x
`--per-mailbox` messages of ~`--size` bytes of text; the default: 50,000 messages, ~2 GiB) and
lets Dovecot index them, then measures:

- delivery latency (c=1, port 25, 250 to the Maildir) and IMAP LOGIN+SELECT, idle and while the
  first backup runs;
- the first backup and a nightly incremental one (after 500 new messages): duration and bytes
  added, CPU seconds and the peak resident memory of its largest program, restic (all from
  sams-backup's status record: the kernel's rusage of the run's children);
- restoring one mailbox's folder after 1,000 of its messages were deleted;
- the whole host lost and rebuilt by `up` with sams:backup.restore: from the loss to a message
  from the internet readable over IMAP again.

Clients run in sams-inet; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

import mockrun
from bench.fresh import fresh_lab
from bench.mail_path import Bench, imap_logins, ms, pct
from bench.record import record
from components.backup.plan import STATUS_FILE, UNIT
from lab import acme, control
from lab.hostcmd import WAIT_RSPAMD, sh
from lab.session import up_with
from lab.spec import StatePaths
from lab.world import World, world

DOMAIN = "sams.test"
RUN_LIMIT = 3600.0  # seconds, for one backup run


def mail_list(directory: Path, mailboxes: int) -> Path:
    """The lab's list with `mailboxes` more mailboxes (bench1..N) and quotas that hold the store."""
    data = yaml.safe_load((Path(mockrun.PROJECT_DIR) / "stacks/lab/mail_list.yml").read_text())
    data["defaults"]["quota"] = "10G"
    domain = next(d for d in data["domains"] if d["name"] == DOMAIN)
    domain["users"] += [f"bench{i}" for i in range(1, mailboxes + 1)]
    out = directory / "mail_list.yml"
    out.write_text(yaml.safe_dump(data))
    return out


# Runs on the host as root: message files in each Maildir's cur/ (seen, as old mail is; each body
# unique random base64, like an attachment: no dedup or compression flatters restic), then
# Dovecot indexes them, as it would after a migration.
FILL = """
import base64, os, sys, time
root, users = sys.argv[1], sys.argv[2].split(",")
count, size, start = (int(a) for a in sys.argv[3:6])
for user in users:
    cur = f"{root}/{user}/Maildir/cur"
    os.makedirs(cur, exist_ok=True)
    for n in range(start, start + count):
        body = base64.encodebytes(os.urandom(size * 3 // 4))  # unique, like an attachment
        head = f"From: someone@sender.example\\nTo: {user}@sams.test\\nSubject: bulk {n}\\n"
        head += f"Message-ID: <{user}.{n}@bench>\\n\\n"
        name = f"{cur}/{int(time.time())}.B{n}.{user}.bench:2,S"
        with open(name, "wb") as f:
            f.write(head.encode() + bytes(body))
        os.chown(name, 5000, 5000)
    for d in (root, f"{root}/{user}", f"{root}/{user}/Maildir", cur):  # made by root: vmail's again
        os.chown(d, 5000, 5000)
"""


def fill(w: World, users: list[str], count: int, size: int, start: int = 0) -> float:
    t0 = time.monotonic()
    lab = w.lab
    sh(lab, "cat > /tmp/fill.py", stdin=FILL)
    sh(lab, f"python3 /tmp/fill.py /var/mail/vmail/{DOMAIN} {','.join(users)} {count} {size} {start}")
    for user in users:
        address = f"{user}@{DOMAIN}"
        sh(lab, f"doveadm force-resync -u {address} INBOX && doveadm mailbox status -u {address} messages INBOX")
    return time.monotonic() - t0


def backup(w: World, during: Any = None) -> dict[str, Any]:
    """One run of the unit (as its timer starts it), `during` called meanwhile; its status record, which
    has the run's CPU and peak memory (sams-backup records its children's rusage: restic is the
    largest; the lab container's cgroups have no memory controller to ask instead)."""
    lab = w.lab
    sh(lab, f"systemctl reset-failed {UNIT}.service 2>/dev/null; systemctl start --no-block {UNIT}.service")
    result: dict[str, Any] = {}
    thread = None
    if during is not None:
        thread = threading.Thread(target=lambda: result.update(during()))
        thread.start()
    deadline = time.monotonic() + RUN_LIMIT
    time.sleep(0.5)
    while time.monotonic() < deadline:
        state = sh(lab, f"systemctl is-active {UNIT}.service", check=False).strip()
        if state not in ("active", "activating"):
            break
        time.sleep(0.2)
    if thread:
        thread.join(timeout=600)
    status = json.loads(sh(lab, f"cat {STATUS_FILE}"))
    if status.get("result") != "ok":
        raise SystemExit(f"backup failed: {status}")
    return {**status, "during": result}


def latency_and_logins(bench: Bench, w: World, messages: int, logins: int) -> dict[str, Any]:
    sent = bench.send(25, messages, 1)
    times = w.inet(imap_logins, w.host, w.cafile, w.login("alice@sams.test"), logins, timeout=300)
    return {"delivery": sent, "imap": times}


def p95s(result: dict[str, Any]) -> str:
    lat, imap = result["delivery"]["latency"], result["imap"]
    return f"delivery {ms(pct(lat, 50))} / {ms(pct(lat, 95))}, IMAP {ms(pct(imap, 50))} / {ms(pct(imap, 95))}"


def measure(w: World, paths: StatePaths, list_file: Path, args: argparse.Namespace) -> list[tuple[str, str]]:
    lab = w.lab
    rows: list[tuple[str, str]] = []
    users = [f"bench{i}" for i in range(1, args.mailboxes + 1)]
    seconds = fill(w, users, args.per_mailbox, args.size)
    store = sh(lab, "du -sb /var/mail/vmail | cut -f1").strip()
    total = args.mailboxes * args.per_mailbox
    rows.append(("mail store", f"{total} messages, {int(store) / 2**30:.2f} GiB (written in {seconds:.0f} s)"))
    sh(lab, WAIT_RSPAMD)
    bench = Bench(w, paths)
    bench.warm_up()
    idle = latency_and_logins(bench, w, 100, 50)
    rows.append(("idle: p50 / p95 (ms)", p95s(idle)))

    first = backup(w, lambda: latency_and_logins(bench, w, 100, 50))
    rows.append(("during the first backup: p50 / p95 (ms)", p95s(first["during"])))
    rows.append(
        ("first backup: duration, bytes added", f"{first['duration_s']:.0f} s, {first['bytes_added'] / 2**30:.2f} GiB")
    )
    rows.append(("first backup: CPU, peak RSS of restic", f"{first['cpu_s']:.0f} s, {first['peak_rss_mib']:.0f} MiB"))

    fill(w, ["bench1"], 500, args.size, start=args.per_mailbox)
    nightly = backup(w)
    rows.append(
        (
            "incremental (500 new messages): duration, bytes added",
            f"{nightly['duration_s']:.1f} s, {nightly['bytes_added'] / 2**20:.0f} MiB",
        )
    )
    rows.append(
        ("incremental: CPU, peak RSS of restic", f"{nightly['cpu_s']:.1f} s, {nightly['peak_rss_mib']:.0f} MiB")
    )
    repo = sum(f.stat().st_size for f in (paths.run / "backup" / "data").rglob("*") if f.is_file())
    rows.append(("repository size on the backup server", f"{repo / 2**30:.2f} GiB"))

    sh(lab, f"doveadm expunge -u bench2@{DOMAIN} mailbox INBOX uid 1:1000")
    t0 = time.monotonic()
    out = json.loads(sh(lab, f"/usr/local/sbin/sams-backup restore-mailbox bench2@{DOMAIN} --folder INBOX"))
    rows.append(
        (
            f"restore one folder ({args.per_mailbox} messages, 1,000 missing)",
            f"{time.monotonic() - t0:.1f} s, {out['restored']} restored",
        )
    )

    t0 = time.monotonic()
    control.replace_host(lab.spec, paths)
    backup_cfg = {**json.loads(mockrun.stack_config("lab")["sams:backup"]), "serverCa": acme.server_ca(paths)}
    up_with(lab, {"sams:mailList": str(list_file), "sams:backup": {**backup_cfg, "restore": "latest"}})
    sh(lab, WAIT_RSPAMD)
    tag = f"bench-after-restore-{int(time.time())}"
    w.submit(587, "alice@sams.test", ["bob@sams.test"], tag)
    assert len(w.read("bob@sams.test", tag, wait=60)) == 1
    rows.append(("whole host lost -> `up` with restore -> mail read again", f"{time.monotonic() - t0:.0f} s"))
    count = sh(lab, f"doveadm mailbox status -u bench1@{DOMAIN} messages INBOX").strip()
    rows.append(("bench1 INBOX after the rebuild", count))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mailboxes", type=int, default=5)
    parser.add_argument("--per-mailbox", type=int, default=10000)
    parser.add_argument("--size", type=int, default=42000, help="bytes of text per message")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="samsbench-"))
    paths = StatePaths(tmp / "lab")
    try:
        list_file = mail_list(tmp, args.mailboxes)
        with fresh_lab(paths.root, {"sams:mailList": str(list_file)}) as lab, world(lab, tmp) as w:
            rows = measure(w, paths, list_file, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record(
        "Backups (issue 20)",
        rows,
        "restic 0.18 to restic-rest-server 0.13 in the lab's internet (HTTPS); client, server and host share "
        "this machine's two cores and disk, so the durations are upper bounds for a VPS with its own disk.",
    )


if __name__ == "__main__":
    main()
