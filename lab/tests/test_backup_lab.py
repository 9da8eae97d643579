"""Backups proven on the lab host, against a real backup server (Debian's restic-rest-server in the
lab's internet, lab/backupserver.py), with real clients:

  * a few thousand messages to several users, flags, a changed password, an alias and a Sieve
    script; the nightly unit backs up while IMAP and SMTP keep answering;
  * the host is destroyed (its whole disk) and a new one is `up`'d from the same stack with
    sams:backup.restore: every mailbox's messages (SHA-256 of each) and flags, the changed
    password, the alias, the Sieve script, DKIM, a calendar event and a contact (Radicale) and the
    webmail's users (Roundcube's database) are as they were;
  * one mailbox or folder back from a snapshot, other mailboxes untouched;
  * PostgreSQL to a point in time between two changes;
  * faults: a run killed mid-way, an unreachable repository, a wrong password, a failing dump,
    and an append-only credential that cannot delete snapshots.

The module destroys and rebuilds the host, so it runs after every other lab module (conftest:
`replaces_host`); the host it leaves is the rebuilt one, fully applied from the stack.
"""

from __future__ import annotations

import hashlib
import imaplib
import json
import re
import smtplib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import mockrun
from components.backup.plan import PASSWORD_FILE, STATUS_FILE, UNIT
from components.dav import plan as dav_plan
from components.webmail.plan import ROUNDCUBE_DB
from lab import acme, backupserver, control, s3server
from lab.dns import SENDER_DOMAIN
from lab.dnsclient import verify_dkim
from lab.hostcmd import PSQL, WAIT_RSPAMD, sh
from lab.netclient import imap_logins, message, tls_context, web_login
from lab.session import Lab, up_with
from lab.spec import NAMES
from lab.world import World, stored_hashes, world
from tests.mailcore.test_dav import read_back, write_event_and_contact

pytestmark = [pytest.mark.lab, pytest.mark.replaces_host]

USERS = ("alice@sams.test", "bob@sams.test", "carol@other.test")
# Messages per user from the internet on port 25: a few thousand in all.
PER_USER = {"alice@sams.test": 800, "bob@sams.test": 700, "carol@other.test": 500}
SIEVE_TAG = "sieve-work"  # bob's Sieve script files these into Work
ALIAS = "backup-alias@sams.test"  # added to the mail list before the backup, delivers to bob
NEW_PASSWORD = "carol-changed-after-onboarding-7"
INTERNET_SOURCE = "198.18.0.68"  # an address of its own for the logins fail2ban must not mix with others'


# --- clients (run in a namespace: plain values in and out) ------------------------------------------

# An IMAP LIST reply: (flags) "delimiter" name, the name quoted or an atom.
LIST_LINE = re.compile(r'^\((?P<flags>[^)]*)\) (?P<delim>"[^"]*"|NIL) (?P<name>.+)$')


def deliver_many(host: str, batches: list[tuple[str, list[bytes]]]) -> int:
    """A remote MTA on port 25: one session per recipient, one transaction per message; the count accepted."""
    accepted = 0
    for rcpt, messages in batches:
        with smtplib.SMTP(host, 25, timeout=60, local_hostname=f"mx.{SENDER_DOMAIN}") as client:
            for data in messages:
                client.sendmail(f"someone@{SENDER_DOMAIN}", [rcpt], data)
                accepted += 1
    return accepted


def mailbox_state(host: str, cafile: str, logins: list[tuple[str, str]]) -> dict[str, dict[str, dict[str, str]]]:
    """What a user sees over IMAPS: user -> folder -> {SHA-256 of the message: its flags}."""
    state: dict[str, dict[str, dict[str, str]]] = {}
    for user, password in logins:
        folders: dict[str, dict[str, str]] = {}
        with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(cafile), timeout=60) as imap:
            imap.login(user, password)
            _, listed = imap.list()
            for line in listed:
                found = LIST_LINE.match(line.decode())  # type: ignore[union-attr]
                assert found, line
                name = found.group("name").strip('"')
                _, count = imap.select(f'"{name}"', readonly=True)
                messages: dict[str, str] = {}
                if int(count[0] or 0):
                    _, parts = imap.fetch("1:*", "(FLAGS BODY.PEEK[])")
                    for part in parts:
                        if isinstance(part, tuple):
                            flags = part[0].decode().split("FLAGS (", 1)[1].split(")", 1)[0]
                            kept = sorted(f for f in flags.split() if f != "\\Recent")
                            messages[hashlib.sha256(part[1]).hexdigest()] = " ".join(kept)
                folders[name] = messages
        state[user] = folders
    return state


def set_flags(host: str, cafile: str, login: tuple[str, str], folder: str, numbers: str, flag: str) -> None:
    with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(cafile), timeout=60) as imap:
        imap.login(*login)
        imap.select(folder)
        imap.store(numbers, "+FLAGS", flag)


def expunge(host: str, cafile: str, login: tuple[str, str], folder: str, numbers: str) -> None:
    with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(cafile), timeout=60) as imap:
        imap.login(*login)
        imap.select(folder)
        imap.store(numbers, "+FLAGS", "\\Deleted")
        imap.expunge()


def clients_during(host: str, cafile: str, login: tuple[str, str], seconds: float, limit: int) -> dict[str, Any]:
    """A mail client polling IMAP and a sender on 25, in turn, for `seconds` (at most `limit` rounds):
    every failure, and how many rounds ran."""
    failures: list[str] = []
    rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and rounds < limit:
        rounds += 1
        try:
            with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(cafile), timeout=30) as imap:
                imap.login(*login)
                imap.select("INBOX", readonly=True)
            with smtplib.SMTP(host, 25, timeout=30, local_hostname=f"mx.{SENDER_DOMAIN}") as client:
                client.sendmail(f"someone@{SENDER_DOMAIN}", [login[0]], message("x@y", login[0], f"during-{rounds}"))
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.3)
    return {"rounds": rounds, "failures": failures}


# --- helpers on the host ---------------------------------------------------------------------------


# A oneshot unit is "activating" while it runs (`systemctl is-active` says so, and exits non-zero).
UNIT_DONE = f"""for i in $(seq 600); do
  case "$(systemctl show -p ActiveState --value {UNIT}.service)" in
    activating|active|deactivating) sleep 0.5 ;;
    *) exit 0 ;;
  esac
done; exit 1"""


def status(lab: Lab) -> dict[str, Any]:
    return dict(json.loads(sh(lab, f"cat {STATUS_FILE}")))


def run_unit(lab: Lab) -> tuple[bool, dict[str, Any]]:
    """Start the nightly unit as its timer would and wait for it: (succeeded, the status record)."""
    ok = lab.shell.run(["sudo", "-n", "systemctl", "start", f"{UNIT}.service"], check=False).returncode == 0
    return ok, status(lab)


def tool(lab: Lab, args: str, *, check: bool = True) -> str:
    return sh(lab, f"/usr/local/sbin/sams-backup {args}", check=check)


def snapshots(lab: Lab) -> list[dict[str, Any]]:
    return list(json.loads(tool(lab, "snapshots")))


def backup_config(lab: Lab, **extra: Any) -> dict[str, Any]:
    """sams:backup as the lab sets it (the stack's section and the lab CA), with `extra` on top."""
    backup = json.loads(mockrun.stack_config("lab")["sams:backup"])
    return {**backup, "serverCa": acme.server_ca(lab.paths), **extra}


def with_alias(directory: Path) -> Path:
    """The lab's mail list with one more alias (what an admin adds before the disaster)."""
    stack_list = Path(mockrun.PROJECT_DIR) / "stacks" / "lab" / "mail_list.yml"
    data = yaml.safe_load(stack_list.read_text())
    domain = next(d for d in data["domains"] if d["name"] == "sams.test")
    domain["aliases"].append({"name": ALIAS.split("@")[0], "to": ["bob"]})
    out = directory / "mail_list.yml"
    out.write_text(yaml.safe_dump(data))
    return out


def set_password(lab: Lab, address: str, password: str) -> None:
    """A user's password change as it reaches the database (the runbook's UPDATE and cache flush)."""
    scheme = lab.settings.config.users.password_scheme
    digest = sh(lab, f"doveadm pw -s {scheme} -p '{password}'").strip()
    local, domain = address.split("@")
    where = f"local_part = '{local}' AND domain = '{domain}'"
    sh(lab, PSQL, stdin=f"UPDATE users SET password_hash = '{digest}' WHERE {where};")
    sh(lab, f"doveadm auth cache flush {address} >/dev/null")


SIEVE = f"""require ["fileinto", "mailbox"];
if header :contains "subject" "{SIEVE_TAG}" {{ fileinto :create "Work"; stop; }}
"""


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("backup")) as w:
        yield w


@pytest.fixture(scope="module")
def mail_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_alias(tmp_path_factory.mktemp("mail-list"))


def logins(mail: World, overrides: dict[str, str] | None = None) -> list[tuple[str, str]]:
    passwords = {**mail.passwords, **(overrides or {})}
    return [(u, passwords[u]) for u in USERS]


def tag() -> str:
    return f"backup-{uuid.uuid4().hex[:10]}"


# --- the disaster: back up, lose the host, rebuild it from the backup -------------------------------


@pytest.fixture(scope="module")
def before(mail: World, mail_list: Path) -> dict[str, Any]:
    """The host as the disaster finds it, backed up by its nightly unit: what the rebuilt one must equal."""
    lab = mail.lab
    up_with(lab, {"sams:mailList": str(mail_list)})
    sh(lab, "doveadm sieve put -a -u bob@sams.test work", stdin=SIEVE)
    # What earlier lab modules left in these mailboxes (their mail is part of the backup too).
    earlier = mail.inet(mailbox_state, mail.host, mail.cafile, logins(mail), timeout=300)
    had = {u: sum(len(m) for m in folders.values()) for u, folders in earlier.items()}
    marker = tag()
    batches = []
    for user, count in PER_USER.items():
        subjects = [f"{marker} {i} {SIEVE_TAG if user.startswith('bob') and i % 7 == 0 else ''}" for i in range(count)]
        batches.append((user, [message(f"someone@{SENDER_DOMAIN}", user, s, size=600) for s in subjects]))
    batches.append((ALIAS, [message(f"someone@{SENDER_DOMAIN}", ALIAS, f"{marker} via alias")]))
    assert mail.inet(deliver_many, mail.host, batches, timeout=900) == sum(PER_USER.values()) + 1
    # Delivery is asynchronous after the 250: wait until every message is in its mailbox.
    want = {u: had[u] + n + (1 if u.startswith("bob") else 0) for u, n in PER_USER.items()}
    deadline = time.monotonic() + 300
    while True:
        state = mail.inet(mailbox_state, mail.host, mail.cafile, logins(mail), timeout=300)
        have = {u: sum(len(m) for m in folders.values()) for u, folders in state.items()}
        if all(have[u] >= want[u] for u in want) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert have == want, have
    filed = len(state["bob@sams.test"]["Work"]) - len(earlier["bob@sams.test"].get("Work", {}))
    assert filed == len([i for i in range(700) if i % 7 == 0])
    mail.inet(set_flags, mail.host, mail.cafile, mail.login("alice@sams.test"), "INBOX", "1:300", "\\Seen")
    mail.inet(set_flags, mail.host, mail.cafile, mail.login("alice@sams.test"), "INBOX", "250:270", "\\Flagged")
    mail.inet(set_flags, mail.host, mail.cafile, mail.login("bob@sams.test"), "Work", "1:20", "\\Answered")
    set_password(lab, "carol@other.test", NEW_PASSWORD)
    after_change = logins(mail, {"carol@other.test": NEW_PASSWORD})
    state = mail.inet(mailbox_state, mail.host, mail.cafile, after_change, timeout=300)
    # The webmail's and the calendars' own data (the lab's webmail is on, calendars too, over the
    # tunnel): alice logs in to Roundcube (its database gets her row) and saves an event and a contact.
    assert mail.admin(web_login, mail.host, mail.cafile, None, *mail.login("alice@sams.test"))[0] == "in"
    uid = uuid.uuid4().hex
    dav = mail.admin(write_event_and_contact, dav_base(mail), mail.cafile, *mail.login("alice@sams.test"), uid)
    assert dav["mkcol"] == 201 and dav["put"] == 201, dav
    ok, record = run_unit(lab)
    assert ok and record["result"] == "ok", record
    web = {"uid": uid, "book": dav["book"], "roundcube_users": roundcube_users(lab)}
    assert "alice@sams.test" in web["roundcube_users"], web
    return {"state": state, "hashes": stored_hashes(lab), "status": record, "logins": after_change, "web": web}


def dav_base(mail: World) -> str:
    return f"https://{mail.host}{dav_plan.URL_PATH}"


def roundcube_users(lab: Lab) -> list[str]:
    """The users Roundcube's own database knows (a row each, made at the first login, with their settings)."""
    return sh(lab, f"sqlite3 {ROUNDCUBE_DB} 'SELECT username FROM users ORDER BY username'").split()


def test_the_nightly_unit_backs_up_and_records_it(mail: World, before: dict[str, Any]) -> None:
    record = before["status"]
    assert record["repository"] == backupserver.repository()
    assert record["check"] == {"result": "ok", "args": record["check"]["args"]}
    assert record["bytes_added"] > 2_000_000 and record["files"] >= sum(PER_USER.values()), record
    assert record["last_success"] == record["finished"]
    found = {s["id"]: s for s in snapshots(mail.lab)}
    assert set(record["snapshots"].values()) <= set(found), (record, list(found))
    db = found[record["snapshots"]["postgres"]]
    assert db["paths"] == ["/postgres-base.tar"] and "postgres" in db["tags"], db
    # Encrypted at rest: the backup server's files hold no message text.
    repo = backupserver.directory(mail.lab.paths) / "data" / backupserver.USER
    packs = [p for p in (repo / "data").rglob("*") if p.is_file()]
    sample = b"".join(p.read_bytes() for p in packs[:50])
    assert sample and b"someone@" not in sample


def test_a_lost_host_comes_back_from_the_backup(mail: World, mail_list: Path, before: dict[str, Any]) -> None:
    """Destroy the host's disk, boot a new host from the same stack with restore on: the mail,
    flags, changed password, alias, Sieve script, DKIM signing, calendars, contacts and the webmail's
    users are as they were."""
    lab = mail.lab
    start = time.monotonic()
    timings = control.replace_host(lab.spec, lab.paths)
    assert sh(lab, "test -d /var/mail/vmail && echo yes || echo no").strip() == "no"  # nothing survived
    # The snapshot `before` made, by its id: later runs (the next test's) hold mail that came after it.
    chosen = before["status"]["snapshots"]["files"][:12]
    report = up_with(lab, {"sams:mailList": str(mail_list), "sams:backup": backup_config(lab, restore=chosen)})
    assert "backup-backup" in report.ran
    sh(lab, WAIT_RSPAMD)
    flowing = time.monotonic() - start
    print(f"\nhost replaced: {timings}; from loss to mail flowing again: {flowing:.1f} s")

    state = mail.inet(mailbox_state, mail.host, mail.cafile, before["logins"], timeout=300)
    for user in USERS:
        assert state[user].keys() == before["state"][user].keys(), user
        for folder, messages in before["state"][user].items():
            assert state[user][folder] == messages, (user, folder, len(state[user][folder]), len(messages))
    # No user got a new first password: the database's hashes are the ones backed up.
    assert stored_hashes(lab) == before["hashes"]
    old = mail.passwords["carol@other.test"]
    ns, bridge = NAMES.ns_inet, NAMES.bridge
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{INTERNET_SOURCE}/32", "dev", bridge], check=True)
    try:
        attempts = [("carol@other.test", NEW_PASSWORD), ("carol@other.test", old)]
        got = mail.inet(imap_logins, mail.host, mail.cafile, INTERNET_SOURCE, attempts)
    finally:
        sh(lab, f"fail2ban-client set dovecot unbanip {INTERNET_SOURCE} || true")
        subprocess.run(["ip", "-n", ns, "addr", "del", f"{INTERNET_SOURCE}/32", "dev", bridge], check=False)
    assert got == ["ok", "failed"], got

    marker = tag()
    batches = [
        (ALIAS, [message(f"x@{SENDER_DOMAIN}", ALIAS, f"{marker} alias")]),
        ("bob@sams.test", [message(f"x@{SENDER_DOMAIN}", "bob@sams.test", f"{marker} {SIEVE_TAG}")]),
    ]
    assert mail.inet(deliver_many, mail.host, batches) == 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        bob = mail.inet(mailbox_state, mail.host, mail.cafile, [mail.login("bob@sams.test")])["bob@sams.test"]
        grown = {f: len(bob[f]) - len(before["state"]["bob@sams.test"][f]) for f in ("INBOX", "Work")}
        if grown == {"INBOX": 1, "Work": 1}:
            break
        time.sleep(1)
    assert grown == {"INBOX": 1, "Work": 1}, grown  # the alias delivered to INBOX, Sieve filed into Work
    subject_ = tag()
    mail.submit(587, "alice@sams.test", ["bob@sams.test"], subject_)
    raw = mail.read("bob@sams.test", subject_)[0]
    verdict = mail.inet(verify_dkim, raw, lab.spec.inet_ipv4)
    assert verdict["ok"], verdict
    assert chosen.startswith(json.loads(sh(lab, "cat /var/lib/sams/backup/restored.json"))["files"])
    # The calendar event and the contact, read by a new DAV session; Roundcube's users, and alice's
    # webmail login (the session key is the new host's own: only sessions are lost).
    web = before["web"]
    back = mail.admin(read_back, dav_base(mail), mail.cafile, *mail.login("alice@sams.test"), web["uid"], web["book"])
    assert any(f"UID:{web['uid']}" in event for event in back["events"]), back["events"]
    assert back["card_status"] == 200 and "FN:Carol Contact" in str(back["card"]), back
    assert roundcube_users(lab) == web["roundcube_users"]
    assert mail.admin(web_login, mail.host, mail.cafile, None, *mail.login("alice@sams.test"))[0] == "in"


def test_up_never_restores_over_a_host_with_mail(mail: World, mail_list: Path) -> None:
    """restore stays set: the next `up` (a changed step) leaves the host's mail alone."""
    lab = mail.lab
    marker = tag()
    assert mail.inet(deliver_many, mail.host, [("alice@sams.test", [message("x@y", "alice@sams.test", marker)])]) == 1
    assert len(mail.read("alice@sams.test", marker)) == 1
    up_with(
        lab, {"sams:mailList": str(mail_list), "sams:backup": backup_config(lab, restore="latest", keep={"daily": 8})}
    )
    assert len(mail.read("alice@sams.test", marker)) == 1


def test_nothing_stops_while_a_backup_runs(mail: World, before: dict[str, Any]) -> None:
    """A polling mail client and a sender on 25 see no failure while the unit runs (with 300 MB new)."""
    lab = mail.lab
    sh(lab, "head -c 300M /dev/urandom > /var/mail/archive/bulk.bin")
    try:
        sh(lab, f"systemctl start --no-block {UNIT}.service")
        seen = mail.inet(clients_during, mail.host, mail.cafile, mail.login("alice@sams.test"), 8.0, 20, timeout=120)
        running = sh(lab, f"systemctl is-active {UNIT}.service", check=False).strip()
        sh(lab, UNIT_DONE)
    finally:
        sh(lab, "rm -f /var/mail/archive/bulk.bin")
    assert seen["failures"] == [] and seen["rounds"] >= 5, seen
    assert running in ("activating", "inactive"), running
    assert status(lab)["result"] == "ok"
    # The retention (keep: 7 daily, 5 weekly, 12 monthly; restic groups by host and paths): restic keeps
    # each group's newest snapshot of each day and, while its buckets are not filled, the group's oldest.
    # The module's snapshots are all from the last hour, so one more run leaves at most one snapshot a
    # day besides the oldest (exactly two when all are from one day; three when the run crossed
    # midnight), and this run's snapshots are gone.
    middle = set(status(lab)["snapshots"].values())
    assert run_unit(lab)[0]
    groups: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}
    for snap in snapshots(lab):
        groups.setdefault((snap["hostname"], tuple(snap["paths"])), []).append(snap)
    assert ("mail.sams.test", ("/postgres-base.tar",)) in groups, groups
    for group, snaps in groups.items():
        _oldest, *rest = sorted(snaps, key=lambda snap: snap["time"])
        days = [snap["time"][:10] for snap in rest]  # the host's clock is UTC, as restic's days are
        assert rest and len(days) == len(set(days)), (group, [(snap["id"][:8], snap["time"]) for snap in snaps])
    assert not middle & {snap["id"] for snaps in groups.values() for snap in snaps}, (middle, groups)


# --- one mailbox, one folder ---------------------------------------------------------------------------


def test_one_folder_and_one_mailbox_come_back(mail: World, before: dict[str, Any]) -> None:
    lab = mail.lab
    bob = mail.login("bob@sams.test")
    backed_up = before["state"]["bob@sams.test"]
    mail.inet(expunge, mail.host, mail.cafile, bob, "Work", "1:30")
    mail.inet(expunge, mail.host, mail.cafile, bob, "INBOX", "1:100")
    alice_before = mail.inet(mailbox_state, mail.host, mail.cafile, [mail.login("alice@sams.test")])
    inbox_short = mail.inet(mailbox_state, mail.host, mail.cafile, [bob])["bob@sams.test"]["INBOX"]

    # The latest snapshot (the retention has pruned `before`'s own since): bob's mail is the same in it.
    out = json.loads(tool(lab, "restore-mailbox bob@sams.test --folder Work"))
    assert out["restored"] == 30, out
    now = mail.inet(mailbox_state, mail.host, mail.cafile, [bob])["bob@sams.test"]
    assert now["Work"].keys() >= backed_up["Work"].keys()
    assert now["INBOX"] == inbox_short  # INBOX untouched by the folder's restore: still 100 short

    out = json.loads(tool(lab, "restore-mailbox bob@sams.test"))
    assert out["restored"] == 100, out
    now = mail.inet(mailbox_state, mail.host, mail.cafile, [bob])["bob@sams.test"]
    assert now["INBOX"].keys() >= backed_up["INBOX"].keys()
    # Flags come back with the messages (Maildir keeps them in the file name).
    assert {now["Work"][h] for h in backed_up["Work"] if "Answered" in backed_up["Work"][h]} == {"\\Answered"}
    assert mail.inet(mailbox_state, mail.host, mail.cafile, [mail.login("alice@sams.test")]) == alice_before

    bad = lab.shell.run(
        ["sudo", "-n", "/usr/local/sbin/sams-backup", "restore-mailbox", "bob@sams.test", "--snapshot", "deadbeef"],
        check=False,
    )
    assert bad.returncode == 1 and b"no files snapshot deadbeef in rest:https://backup.lab.example" in bad.stderr


# --- PostgreSQL to a point in time ---------------------------------------------------------------------


def test_postgres_comes_back_to_a_moment_between_two_changes(mail: World) -> None:
    lab = mail.lab
    sql = f"{PSQL} -At"
    sh(lab, sql, stdin="CREATE TABLE IF NOT EXISTS pitr_probe (v text); TRUNCATE pitr_probe;")
    ok, record = run_unit(lab)  # the base backup the recovery starts from
    assert ok, record
    try:
        sh(lab, sql, stdin="INSERT INTO pitr_probe VALUES ('first');")
        sh(lab, sql, stdin="UPDATE users SET quota_bytes = quota_bytes + 1 WHERE local_part = 'alice';")
        between = sh(
            lab, sql, stdin="SELECT to_char(now() AT TIME ZONE 'UTC' + interval '1 second', 'YYYY-MM-DD HH24:MI:SS');"
        ).strip()
        quota_then = sh(lab, sql, stdin="SELECT quota_bytes FROM users WHERE local_part = 'alice';").strip()
        time.sleep(3)
        sh(
            lab,
            sql,
            stdin="INSERT INTO pitr_probe VALUES ('second');"
            " UPDATE users SET quota_bytes = 1 WHERE local_part = 'alice';",
        )
        sh(lab, sql, stdin="SELECT pg_switch_wal();")  # the segment with both changes goes to the archive
        time.sleep(2)
        out = json.loads(tool(lab, f"restore-postgres --time '{between}'"))
        assert out["base"] == next(s for s in snapshots(lab) if s["id"] == record["snapshots"]["postgres"])["short_id"]
        assert sh(lab, sql, stdin="SELECT string_agg(v, ',') FROM pitr_probe;").strip() == "first"
        assert sh(lab, sql, stdin="SELECT quota_bytes FROM users WHERE local_part = 'alice';").strip() == quota_then
        assert sh(lab, sql, stdin="SELECT pg_is_in_recovery();").strip() == "f"  # writable again
        assert out["moved_aside"] and sh(lab, f"test -f {out['moved_aside']}/PG_VERSION && echo kept").strip() == "kept"
        # Mail flows on the recovered database.
        marker = tag()
        mail.submit(587, "alice@sams.test", ["bob@sams.test"], marker)
        assert len(mail.read("bob@sams.test", marker)) == 1
    finally:
        sh(lab, sql, stdin="DROP TABLE IF EXISTS pitr_probe;")
        up_with(lab, {})  # the program's quotas again (the mail list is the source of truth)


# --- the second copy --------------------------------------------------------------------------------


def test_a_second_copy_holds_every_snapshot(mail: World) -> None:
    """sams:backup.copyTo: its own timer's unit copies every snapshot to a second repository (another
    login on the backup server, as long-term storage would be); a second run adds nothing."""
    lab = mail.lab
    copy = {"repository": backupserver.repository(backupserver.COPY_USER), "schedule": "monthly"}
    secrets = {
        "sams:backupCopyKeyId": backupserver.COPY_USER,
        "sams:backupCopyKeySecret": backupserver.password(lab.paths, backupserver.COPY_USER),
    }
    up_with(lab, {"sams:backup": backup_config(lab, copyTo=copy), **secrets})
    try:
        assert sh(lab, "systemctl is-enabled sams-backup-copy.timer").strip() == "enabled"
        sh(lab, "systemctl start sams-backup-copy.service")
        primary = {s["id"] for s in snapshots(lab)}
        copied = json.loads(tool(lab, "snapshots --copy"))
        assert {s.get("original", s["id"]) for s in copied} == primary
        assert status(lab)["copy"]["result"] == "ok"
        sh(lab, "systemctl start sams-backup-copy.service")
        assert len(json.loads(tool(lab, "snapshots --copy"))) == len(copied)
        ok, record = run_unit(lab)  # the nightly run keeps the copy's record
        assert ok and record["copy"]["result"] == "ok", record
    finally:
        up_with(lab, {})
    assert sh(lab, "systemctl is-enabled sams-backup-copy.timer 2>&1 || true").strip() != "enabled"
    assert sh(lab, "test -e /etc/sams/backup/copy-env && echo left || echo gone").strip() == "gone"


# --- S3 ---------------------------------------------------------------------------------------------


def test_an_s3_repository_backs_up_and_restores(mail: World) -> None:
    """The path a program-created bucket takes (Oracle Cloud, Vultr): an S3 repository with an access
    key, against a real S3 server (rclone serve s3); a folder comes back from it."""
    lab = mail.lab
    marker = tag()
    batch = [
        ("alice@sams.test", [message(f"x@{SENDER_DOMAIN}", "alice@sams.test", f"{marker} {i}") for i in range(10)])
    ]
    assert mail.inet(deliver_many, mail.host, batch) == 10
    assert len(mail.read("alice@sams.test", marker, want=10)) == 10
    server = s3server.start(lab.paths, lab.spec.inet_ipv4, "lab-s3-secret-" + uuid.uuid4().hex[:12])
    s3 = {"sams:backupKeyId": s3server.ACCESS_KEY, "sams:backupKeySecret": server.secret_key}
    try:
        up_with(lab, {"sams:backup": backup_config(lab, repository=server.repository()), **s3})
        env = sh(lab, "sed 's/=.*/=.../' /etc/sams/backup/env")
        assert env.splitlines() == ["AWS_ACCESS_KEY_ID=...", "AWS_SECRET_ACCESS_KEY=...", "AWS_DEFAULT_REGION=..."]
        ok, record = run_unit(lab)
        assert ok and record["repository"] == server.repository(), record
        assert record["bytes_added"] > 2_000_000, record  # a new repository: everything once
        # rclone writes objects through its cache and uploads them to its store a few seconds later.
        deadline = time.monotonic() + 60
        root = server.directory / "data" / s3server.BUCKET / "sams"  # the repository's path in the bucket
        while time.monotonic() < deadline:
            objects = [p for p in root.rglob("*") if p.is_file()]
            if {"config", "data", "index", "snapshots"} <= {p.relative_to(root).parts[0] for p in objects}:
                break
            time.sleep(1)
        assert {"config", "data", "index", "snapshots"} <= {p.relative_to(root).parts[0] for p in objects}, objects
        alice = mail.login("alice@sams.test")
        before = mail.inet(mailbox_state, mail.host, mail.cafile, [alice])["alice@sams.test"]["INBOX"]
        mail.inet(expunge, mail.host, mail.cafile, alice, "INBOX", "1:5")
        out = json.loads(tool(lab, "restore-mailbox alice@sams.test --folder INBOX"))
        assert out["restored"] == 5, out
        after = mail.inet(mailbox_state, mail.host, mail.cafile, [alice])["alice@sams.test"]["INBOX"]
        assert after.keys() >= before.keys()
    finally:
        up_with(lab, {})
        s3server.stop(lab.paths)


# --- faults ----------------------------------------------------------------------------------------------


def test_a_run_killed_midway_leaves_a_repository_the_next_run_uses(mail: World) -> None:
    lab = mail.lab
    assert run_unit(lab)[0]  # a repository with snapshots in it, as a killed night finds it
    sh(lab, "head -c 400M /dev/urandom > /var/mail/archive/bulk.bin")
    try:
        sh(lab, f"systemctl start --no-block {UNIT}.service")
        # [r]: the pattern must not match this shell's own command line.
        files = "pgrep -f '[r]estic .*backup .*--tag files' >/dev/null"
        sh(lab, f"for i in $(seq 300); do {files} && break; sleep 0.1; done")
        assert sh(lab, f"{files} && echo running", check=False).strip() == "running"
        time.sleep(1)
        sh(lab, f"systemctl kill -s KILL {UNIT}.service")
        sh(lab, UNIT_DONE)
        assert "no errors were found" in tool(lab, "check")
        ok, record = run_unit(lab)
        assert ok and record["result"] == "ok", record
    finally:
        sh(lab, "rm -f /var/mail/archive/bulk.bin")


def test_an_unreachable_repository_fails_the_unit_naming_it_and_mail_flows(mail: World) -> None:
    lab = mail.lab
    backupserver.stop(lab.paths)
    try:
        ok, record = run_unit(lab)
        assert not ok and record["result"] == "failed", record
        assert "rest:https://backup.lab.example:8000/sams/" in record["message"], record
        assert record["last_success"], record  # the last good run is still known
        assert sh(lab, f"systemctl is-failed {UNIT}.service", check=False).strip() == "failed"
        journal = sh(lab, f"journalctl -u {UNIT}.service -n 20 --no-pager")
        assert "backup.lab.example" in journal, journal
        marker = tag()
        assert (
            mail.inet(deliver_many, mail.host, [("alice@sams.test", [message("x@y", "alice@sams.test", marker)])]) == 1
        )
        assert len(mail.read("alice@sams.test", marker)) == 1
    finally:
        backupserver.start(lab.paths, lab.spec.inet_ipv4)
    ok, record = run_unit(lab)
    assert ok, record


def test_a_wrong_repository_password_says_so(mail: World) -> None:
    lab = mail.lab
    up_with(lab, {"sams:backupPassword": "not-the-repository-password"})
    try:
        ok, record = run_unit(lab)
        assert not ok and "wrong repository password for rest:https://backup.lab.example" in record["message"], record
    finally:
        up_with(lab, {})
    assert sh(lab, f"stat -c %a {PASSWORD_FILE}").strip() == "600"


def test_a_failing_dump_fails_the_run_and_leaves_no_snapshot(mail: World) -> None:
    lab = mail.lab
    count = len(snapshots(lab))
    sh(lab, "systemctl stop sams-postgres.service")
    try:
        ok, record = run_unit(lab)
    finally:
        sh(lab, "systemctl start sams-postgres.service")
    assert not ok and record["result"] == "failed", record
    assert "pg_basebackup" in record["message"] or "command failed" in record["message"], record
    assert len(snapshots(lab)) == count


def test_an_append_only_credential_cannot_delete_snapshots(mail: World) -> None:
    """With the backup server append-only the host cannot forget snapshots; with sams:backup.forget
    off the nightly run still succeeds, and the server's owner prunes."""
    lab = mail.lab
    backupserver.stop(lab.paths)
    backupserver.start(lab.paths, lab.spec.inet_ipv4, append_only=True)
    try:
        victim = snapshots(lab)[0]["id"]
        env = "set -a; . /etc/sams/backup/env; set +a; export RESTIC_PASSWORD_FILE=/etc/sams/backup/password"
        repo = json.loads(sh(lab, "cat /etc/sams/backup/config.json"))["repository"]
        forget = sh(
            lab,
            f"{env}; restic -r {repo} --cacert /etc/sams/backup/ca.pem forget {victim} 2>&1; echo rc=$?",
            check=False,
        )
        assert "403 Forbidden" in forget, forget  # restic itself exits 0 here: the tool reads its stderr
        assert victim in {s["id"] for s in snapshots(lab)}
        ok, record = run_unit(lab)  # forget on: its prune is refused, the run says so
        assert not ok and "restic forget could not delete old snapshots" in record["message"], record
        up_with(lab, {"sams:backup": backup_config(lab, forget=False)})
        ok, record = run_unit(lab)
        assert ok and record["result"] == "ok", record
    finally:
        backupserver.stop(lab.paths)
        backupserver.start(lab.paths, lab.spec.inet_ipv4)
        up_with(lab, {})


def test_turning_backups_off_leaves_nothing_behind(mail: World) -> None:
    """sams:backup.enabled false: the timers, units, tool, config and secrets leave the host (the
    repository and its snapshots stay on the server); on again, the nightly run works."""
    lab = mail.lab
    assert sh(lab, "ls /etc/sams/backup").split()  # the stack's own setting: on
    assert run_unit(lab)[0]  # a repository with a snapshot, which turning off must leave alone
    up_with(lab, {"sams:backup": {**backup_config(lab), "enabled": False}})
    try:
        assert sh(lab, "ls -A /etc/sams/backup").strip() == ""
        assert sh(lab, "test -e /usr/local/sbin/sams-backup && echo left || echo gone").strip() == "gone"
        for unit in (f"{UNIT}.timer", f"{UNIT}.service", "sams-backup-copy.timer"):
            state = sh(lab, f"systemctl show -p LoadState --value {unit}").strip()
            assert state == "not-found", (unit, state)
        assert (backupserver.directory(lab.paths) / "data" / backupserver.USER / "config").exists()
    finally:
        up_with(lab, {})
    ok, record = run_unit(lab)
    assert ok and record["result"] == "ok", record
