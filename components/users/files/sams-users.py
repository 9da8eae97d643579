#!/usr/bin/python3
"""sams-users: mailbox passwords and offboarding on the mail host (runs as root, Python stdlib only).

    sams-users sync        stdin {"hashes": {addr: hash}, "removed": [addr]}: set first passwords,
                           disable removed users, archive their Maildirs, calendars and webmail
                           settings, purge old archives
    sams-users set-hashes  stdin {"hashes": {addr: hash}}: overwrite (the rotation command)
    sams-users purge       delete archives older than --archive-days (the daily timer)

Common options: --psql "CMD" (a command that runs SQL from stdin as the schema owner),
--vmail-root, --archive-root, --archive-days, --dav-principals (Radicale's collection-root: one
folder per user, their calendars and address books), --webmail-db (Roundcube's SQLite database:
a leaver's row, with their identities, contacts and settings, is renamed <address>#left-<date>).
Every action is printed (one JSON line) and every archive purge is logged by name: nothing is
deleted silently. Hashes never reach stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys

DEFAULT_PSQL = "docker exec -i sams-postgres psql -U sams_owner -d sams"
_ADDRESS = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?@[a-z0-9.-]+$")
_DOVEADM_ERROR = re.compile(r"^(Error|Fatal|Panic):", re.M)
# <user>-<date>[.n]: the home with the Maildir; the same name + DAV_SUFFIX: the calendars and contacts.
_ARCHIVE_NAME = re.compile(r"^(?P<user>.+)-(?P<date>\d{4}-\d{2}-\d{2})(?:\.\d+)?(?:\.dav)?$")
DAV_SUFFIX = ".dav"
# A leaver's Roundcube row: no login matches it (not an address), a new user of the address gets a
# row of their own, and the purge deletes it with the rest of the archive.
_WEBMAIL_LEFT = re.compile(r"^(?P<address>[^#]+)#left-(?P<date>\d{4}-\d{2}-\d{2})(?:\.\d+)?$")


def split(address: str) -> tuple[str, str]:
    if not _ADDRESS.match(address):
        raise SystemExit(f"sams-users: not a mailbox address: {address!r}")
    local, _, domain = address.partition("@")
    return local, domain


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _values(hashes: dict[str, str]) -> str:
    rows = []
    for address, hashed in sorted(hashes.items()):
        local, domain = split(address)
        rows.append(f"({_lit(local)}, {_lit(domain)}, {_lit(hashed)})")
    return ", ".join(rows)


def sync_sql(hashes: dict[str, str], removed: list[str]) -> str:
    """First passwords only where none is set (a changed password is never overwritten); removed,
    already deactivated users lose their hash (their Vault secret is gone: nobody knows it)."""
    out = ["\\set ON_ERROR_STOP on", "BEGIN;"]
    if removed:
        keys = ", ".join(f"({_lit(lp)}, {_lit(d)})" for lp, d in map(split, sorted(removed)))
        out.append(f"UPDATE users SET password_hash = NULL WHERE NOT active AND (local_part, domain) IN ({keys});")
    if hashes:
        out.append(
            "UPDATE users u SET password_hash = v.hash FROM (VALUES "
            + _values(hashes)
            + ") AS v (local_part, domain, hash) WHERE u.local_part = v.local_part AND u.domain = v.domain"
            " AND u.password_hash IS NULL AND u.active RETURNING u.local_part || '@' || u.domain;"
        )
    out += ["COMMIT;", ""]
    return "\n".join(out)


def set_hashes_sql(hashes: dict[str, str]) -> str:
    """Rotation: overwrite. Fails (and changes nothing) unless every address is an active mailbox."""
    n = len(hashes)
    return "\n".join(
        [
            "\\set ON_ERROR_STOP on",
            "BEGIN;",
            "CREATE TEMP TABLE rotate (local_part text, domain text, hash text) ON COMMIT DROP;",
            "INSERT INTO rotate VALUES " + _values(hashes) + ";",
            "DO $$ BEGIN IF (SELECT count(*) FROM users u JOIN rotate r USING (local_part, domain) WHERE u.active)"
            f" <> {n} THEN RAISE EXCEPTION 'sams-users: some addresses are not active mailboxes'; END IF; END $$;",
            "UPDATE users u SET password_hash = r.hash FROM rotate r"
            " WHERE u.local_part = r.local_part AND u.domain = r.domain;",
            "COMMIT;",
            "",
        ]
    )


def read_request(action: str, text: str) -> tuple[dict[str, str], list[str]]:
    """stdin's JSON, checked before anything runs: (hashes, removed). set-hashes needs an address."""
    expected = '{"hashes": {"user@domain": "{SCHEME}hash"}'
    expected += ', "removed": ["user@domain"]}' if action == "sync" else "}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(
            f"sams-users {action}: stdin is not JSON ({e.msg}, line {e.lineno}); expected {expected}"
        ) from e
    if not isinstance(data, dict):
        raise SystemExit(f"sams-users {action}: stdin is not a JSON object; expected {expected}")
    hashes, removed = data.get("hashes") or {}, data.get("removed") or []
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise SystemExit(f'sams-users {action}: stdin\'s "hashes" is not an object of strings; expected {expected}')
    if not isinstance(removed, list) or not all(isinstance(a, str) for a in removed):
        raise SystemExit(f'sams-users {action}: stdin\'s "removed" is not a list of addresses; expected {expected}')
    if action == "set-hashes" and not hashes:
        raise SystemExit(f"sams-users set-hashes: stdin names no address, nothing changed; expected {expected}")
    for address in [*hashes, *removed]:
        split(address)  # exits naming a malformed address
    return hashes, removed


def run_sql(psql: str, sql: str) -> list[str]:
    """Run `sql`; the rows it returned, one string per row."""
    cmd = [*shlex.split(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    result = subprocess.run(cmd, input=sql.encode(), capture_output=True, check=False)
    if result.returncode != 0:
        # psql's error names the statement, never the hash values (they are in VALUES, not echoed).
        err = result.stderr.decode(errors="replace")
        err = re.sub(r"\{[A-Z0-9-]+\}\S+", "{…}", err)
        raise SystemExit(f"sams-users: psql failed ({result.returncode}): {err.strip()}")
    return [line for line in result.stdout.decode().splitlines() if line]


def flush_auth_cache() -> tuple[bool, str]:
    """Make Dovecot drop what it cached from the users table (auth_cache_size in dovecot.conf), so
    a new hash counts, and a disabled user is refused, at once. (flushed, doveadm's error if it
    failed); not flushed and no error where Dovecot is not running: nothing is cached then."""
    if not shutil.which("doveadm") or not shutil.which("systemctl"):
        return False, ""
    if subprocess.run(["systemctl", "is-active", "--quiet", "dovecot"], check=False).returncode != 0:
        return False, ""
    result = subprocess.run(["doveadm", "auth", "cache", "flush"], capture_output=True, check=False)
    err = result.stderr.decode(errors="replace").strip()
    # doveadm 2.4.1 exits 0 even when it cannot reach the auth process (it prints "Error: ..." and
    # "0 cache entries flushed"): an error line is a failure as a non-zero exit is.
    if result.returncode != 0 or _DOVEADM_ERROR.search(err):
        return False, (
            f"the database is updated, but `doveadm auth cache flush` failed ({result.returncode}): {err}; "
            "Dovecot may answer from its cache for up to auth_cache_ttl (an hour)"
        )
    return True, ""


def move_keeping_owners(src: str, dest: str) -> None:
    """shutil.move, with every entry's owner and group as they were: across two filesystems (the
    archive on the mail volume, Radicale's folder on the root one) it copies, and the copies would
    be root's."""
    owners = {}
    for root, dirs, files in os.walk(src):
        for name in (".", *dirs, *files):
            path = os.path.normpath(os.path.join(root, name))
            st = os.lstat(path)
            owners[os.path.relpath(path, src)] = (st.st_uid, st.st_gid)
    shutil.move(src, dest)  # a rename on one filesystem, copy + delete across two
    for rel, (uid, gid) in owners.items():
        os.lchown(os.path.normpath(os.path.join(dest, rel)), uid, gid)


def archive(vmail_root: str, archive_root: str, address: str, today: dt.date, dav_principals: str = "") -> str | None:
    """Move <vmail>/<domain>/<user> to <archive>/<domain>/<user>-<date>, and the user's DAV folder
    (<dav_principals>/<address>) beside it as <user>-<date>.dav; the archive's path (without the
    suffix), None if the user had neither. A later user with the same address starts empty."""
    local, domain = split(address)
    src = os.path.join(vmail_root, domain, local)
    dav = os.path.join(dav_principals, address) if dav_principals else ""
    has_mail, has_dav = os.path.isdir(src), bool(dav) and os.path.isdir(dav)
    if not (has_mail or has_dav):
        return None
    if shutil.which("doveadm"):  # close open IMAP sessions first; best effort
        subprocess.run(["doveadm", "kick", address], capture_output=True, check=False)
    parent = os.path.join(archive_root, domain)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    dest = os.path.join(parent, f"{local}-{today.isoformat()}")
    n = 1
    while os.path.lexists(dest) or os.path.lexists(dest + DAV_SUFFIX):
        dest = os.path.join(parent, f"{local}-{today.isoformat()}.{n}")
        n += 1
    if has_mail:
        move_keeping_owners(src, dest)  # vmail's: Dovecot reads it again if the runbook moves it back
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(vmail_root, domain))  # only if the whole domain is gone
    if has_dav:
        move_keeping_owners(dav, dest + DAV_SUFFIX)  # the runbook moves it back as it was
    return dest


def _expired(pattern: re.Pattern[str], name: str, days: int, today: dt.date) -> int | None:
    """The age in days of an archive named with its date (`pattern`'s group "date"), if it is more
    than `days` days old; None if it is younger or the name is not an archive's."""
    m = pattern.match(name)
    if not m:
        return None
    try:
        age = (today - dt.date.fromisoformat(m.group("date"))).days
    except ValueError:
        return None
    return age if age > days else None


def _webmail_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30)  # Roundcube may be writing: wait for its lock
    db.execute("PRAGMA foreign_keys = ON")  # its schema deletes a user's rows with the user (CASCADE)
    return db


def archive_webmail(db_path: str, address: str, today: dt.date) -> str | None:
    """Rename the leaver's Roundcube row (their identities, contacts, settings hang on its id) to
    <address>#left-<date>[.n]; the new name, None if Roundcube has no row for them."""
    if not db_path or not os.path.exists(db_path):
        return None
    with contextlib.closing(_webmail_db(db_path)) as db, db:
        query = "SELECT username FROM users WHERE username LIKE ?"
        taken = {row[0] for row in db.execute(query, (f"{address}#left-%",))}
        name, n = f"{address}#left-{today.isoformat()}", 1
        while name in taken:
            name, n = f"{address}#left-{today.isoformat()}.{n}", n + 1
        changed = db.execute("UPDATE users SET username = ? WHERE username = ?", (name, address)).rowcount
    return name if changed else None


def purge_webmail(db_path: str, days: int, today: dt.date) -> list[str]:
    """Delete the Roundcube rows of leavers older than `days` days (and, by the schema, their data)."""
    if not db_path or not os.path.exists(db_path):
        return []
    gone = []
    with contextlib.closing(_webmail_db(db_path)) as db, db:
        for (name,) in db.execute("SELECT username FROM users WHERE username LIKE '%#left-%'").fetchall():
            age = _expired(_WEBMAIL_LEFT, name, days, today)
            if age is not None:
                print(f"sams-users: purging webmail user {name} ({age} days old)", file=sys.stderr)
                db.execute("DELETE FROM users WHERE username = ?", (name,))
                gone.append(f"{db_path}:{name}")
    return gone


def purge(archive_root: str, days: int, today: dt.date) -> list[str]:
    """Delete archives whose date (in their name) is more than `days` days ago; return them."""
    gone: list[str] = []
    if not os.path.isdir(archive_root):
        return gone
    for domain in sorted(os.listdir(archive_root)):
        ddir = os.path.join(archive_root, domain)
        if not os.path.isdir(ddir):
            continue
        for name in sorted(os.listdir(ddir)):
            age = _expired(_ARCHIVE_NAME, name, days, today)
            if age is not None:
                path = os.path.join(ddir, name)
                print(f"sams-users: purging archive {path} ({age} days old)", file=sys.stderr)
                shutil.rmtree(path)
                gone.append(path)
    return gone


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sams-users")
    parser.add_argument("action", choices=("sync", "set-hashes", "purge"))
    parser.add_argument("--psql", default=DEFAULT_PSQL)
    parser.add_argument("--vmail-root", default="/var/mail/vmail")
    parser.add_argument("--archive-root", default="/var/mail/archive")
    parser.add_argument("--archive-days", type=int, default=30)
    parser.add_argument("--dav-principals", default="", help="Radicale's collection-root; empty: no DAV")
    parser.add_argument("--webmail-db", default="", help="Roundcube's SQLite database; empty: no webmail")
    parser.add_argument("--today", type=dt.date.fromisoformat, default=None, help="for tests")
    args = parser.parse_args(argv)
    today = args.today or dt.date.today()
    summary: dict[str, object] = {"action": args.action}
    if args.action in ("sync", "set-hashes"):
        hashes, removed = read_request(args.action, sys.stdin.read())
        if args.action == "set-hashes":
            run_sql(args.psql, set_hashes_sql(hashes))
            summary["rotated"] = sorted(hashes)
            summary["auth_cache_flushed"], error = flush_auth_cache()
            if error:  # not a failure: the caller keeps the new passwords, which the database now has
                print(f"sams-users: warning: {error}; run `sudo doveadm auth cache flush` on the host", file=sys.stderr)
        else:
            removed = sorted(removed)
            # Only mailboxes without a password get one: the addresses that did, not the hashes offered.
            summary["first_passwords"] = sorted(run_sql(args.psql, sync_sql(hashes, removed)))
            summary["disabled"] = removed
            # Before the archive: Dovecot refuses the removed users first.
            summary["auth_cache_flushed"], error = flush_auth_cache()
            if error:  # the step fails; the next `pulumi up` repeats the sync, which is safe to repeat
                raise SystemExit(f"sams-users: {error}. Run `pulumi up` again.")
            moved = {a: archive(args.vmail_root, args.archive_root, a, today, args.dav_principals) for a in removed}
            summary["archived"] = {a: d for a, d in moved.items() if d}
            renamed = {a: archive_webmail(args.webmail_db, a, today) for a in removed}
            summary["webmail_archived"] = {a: n for a, n in renamed.items() if n}
    if args.action in ("sync", "purge"):
        purged = purge(args.archive_root, args.archive_days, today)
        summary["purged"] = purged + purge_webmail(args.webmail_db, args.archive_days, today)
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
