"""Onboarding, a changed password surviving a re-run, preview, offboarding, rotation and purge,
with the real program (under mocks, its dynamic provider's real code), a real OpenBao and a real
PostgreSQL 17; the host side is the real `sams-users` tool against a scratch Maildir tree.

Each test builds on the previous one (module order), like successive `pulumi up`s on one stack.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from argon2 import PasswordHasher

import mockrun
from components.database import schema
from components.users.hashing import SCHEMES, hash_password
from components.users.steps import TOOL_SOURCE
from settings import load
from tests.users.conftest import Bao, Postgres, libcrypt

pytestmark = pytest.mark.chroot

DOMAINS = {"sams.test": ["alice", "bob", "carol"], "other.test": ["dave", "erin", "frank"]}
MOUNT, PREFIX = "secret", "mail/users"


class World:
    """One stack's persisted bits between runs: the mail list file, mock state, the host's Maildirs."""

    def __init__(self, tmp: Path, bao: Bao, pg: Postgres):
        self.tmp, self.bao, self.pg = tmp, bao, pg
        self.mail_list = tmp / "mail_list.yml"
        self.store = mockrun.KeyStore(tmp / "state.json")
        self.vmail = tmp / "vmail"
        self.archive = tmp / "archive"
        self.dav = tmp / "collection-root"
        self.webmail_db = tmp / "roundcube.db"
        with contextlib.closing(sqlite3.connect(self.webmail_db)) as db, db:
            db.executescript(ROUNDCUBE_STAND_IN)
        self.vault = hvac.Client(url=bao.address, token=bao.token)

    def write_list(self, domains: dict[str, list[str]]) -> None:
        lines = ["domains:"]
        for d, users in domains.items():
            lines += [f"  - name: {d}", "    users:"] + [f"      - {u}" for u in users]
        self.mail_list.write_text("\n".join(lines) + "\n")

    def overrides(self) -> dict[str, Any]:
        return {"sams:mailList": str(self.mail_list), "sams:vault": {"address": self.bao.address}}

    def program(self, *, preview: bool = False) -> mockrun.Run:
        return mockrun.run(
            "lab",
            overrides=self.overrides(),
            secret_config={**mockrun.TEST_SECRETS, "sams:vaultToken": self.bao.token},
            store=self.store,
            dynamic=True,
            preview=preview,
        )

    def up(self) -> dict[str, Any]:
        """`pulumi up`: the program, then the database step's list sync, then the users step."""
        run = self.program()
        settings = load("lab", {**mockrun.stack_config("lab"), **_encoded(self.overrides())}, mockrun.PROJECT_DIR)
        self.pg.run(schema.mail_list_sql(settings.mail))
        (cmd,) = [r for r in run.of_type("command:remote:Command") if r.name == "users-users-apply"]
        assert cmd.is_secret("stdin")
        assert "sams-users sync" in cmd.inputs["create"]
        return self.tool("sync", cmd.inputs["stdin"])

    def tool(self, action: str, stdin: str = "", *extra: str) -> dict[str, Any]:
        argv = [sys.executable, str(TOOL_SOURCE), action, "--psql", self.pg.psql]
        argv += ["--vmail-root", str(self.vmail), "--archive-root", str(self.archive), "--archive-days", "30"]
        argv += ["--dav-principals", str(self.dav), "--webmail-db", str(self.webmail_db), *extra]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert "{ARGON2ID}" not in result.stdout + result.stderr
        return dict(json.loads(result.stdout))

    def password(self, address: str) -> str:
        local, _, domain = address.partition("@")
        data = self.vault.secrets.kv.v2.read_secret_version(
            path=f"{PREFIX}/{domain}/{local}", mount_point=MOUNT, raise_on_deleted_version=True
        )
        return str(data["data"]["data"]["password"])

    def hash_of(self, address: str) -> str | None:
        local, _, domain = address.partition("@")
        out = self.pg.run(f"SELECT password_hash FROM users WHERE local_part = '{local}' AND domain = '{domain}'")
        return out.strip() or None


# Roundcube's users table and one of the tables that hang on it, as its sqlite.initial.sql has them
# (a stand-in: Roundcube is not installed here; the lab runs the real one, test_users_lab.py).
ROUNDCUBE_STAND_IN = """
CREATE TABLE users (user_id integer PRIMARY KEY, username varchar(128) NOT NULL default '',
  mail_host varchar(128) NOT NULL default '');
CREATE UNIQUE INDEX ix_users_username ON users(username, mail_host);
CREATE TABLE identities (identity_id integer PRIMARY KEY, user_id integer NOT NULL default '0'
  REFERENCES users (user_id) ON DELETE CASCADE ON UPDATE CASCADE, name varchar(128) NOT NULL default '');
"""


def webmail_rows(world: World) -> list[tuple[str, int]]:
    """Roundcube's users and how many identities each has."""
    with contextlib.closing(sqlite3.connect(world.webmail_db)) as db:
        query = "SELECT username, (SELECT count(*) FROM identities i WHERE i.user_id = u.user_id) FROM users u"
        return sorted(db.execute(query).fetchall())


def webmail_login(world: World, address: str) -> None:
    """What Roundcube writes at a user's first login: their row and an identity."""
    with contextlib.closing(sqlite3.connect(world.webmail_db)) as db, db:
        user_id = db.execute(
            "INSERT INTO users (username, mail_host) VALUES (?, 'ssl://mail:993')", (address,)
        ).lastrowid
        db.execute("INSERT INTO identities (user_id, name) VALUES (?, ?)", (user_id, address))


def _encoded(values: dict[str, Any]) -> dict[str, str]:
    return {k: mockrun.encode_config(v) for k, v in values.items()}


def verifies(hashed: str, password: str) -> bool:
    """Checked by implementations other than the program's: libxcrypt's crypt(3) and argon2-cffi."""
    if hashed.startswith("{SHA512-CRYPT}"):
        crypted = hashed.removeprefix("{SHA512-CRYPT}")
        return libcrypt(password, crypted) == crypted
    try:
        return bool(PasswordHasher().verify(hashed.removeprefix("{ARGON2ID}"), password))
    except Exception:
        return False


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bao: Bao, postgres: Postgres) -> World:
    w = World(tmp_path_factory.mktemp("users"), bao, postgres)
    w.write_list(DOMAINS)
    return w


ALL = sorted(f"{u}@{d}" for d, users in DOMAINS.items() for u in users)


def test_onboarding_two_domains_three_users(world: World) -> None:
    summary = world.up()
    assert summary["first_passwords"] == ALL and summary["disabled"] == []
    for address in ALL:
        pw = world.password(address)
        assert re.fullmatch(r"[A-Za-z0-9]{16}", pw), address
        hashed = world.hash_of(address)
        # The stack's default scheme (sams:users.passwordScheme), crypt(3)'s standard 5,000 rounds.
        assert hashed and re.fullmatch(r"\{SHA512-CRYPT\}\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}", hashed), hashed
        assert verifies(hashed, pw)
    assert len({world.password(a) for a in ALL}) == 6


def test_dovecot_verifies_the_hash(world: World) -> None:
    """Dovecot 2.4's own verifier (the scheme it will see in the passdb) accepts the hash."""
    from lab.trixie_chroot import run_in

    address = ALL[0]
    hashed, pw = world.hash_of(address), world.password(address)
    assert hashed
    ok = run_in(world.pg.root, ["doveadm", "pw", "-t", hashed, "-p", pw])
    assert ok.returncode == 0 and "verified" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    bad = run_in(world.pg.root, ["doveadm", "pw", "-t", hashed, "-p", pw + "x"])
    assert bad.returncode != 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dovecot_verifies_every_scheme_the_setting_offers(world: World, scheme: str) -> None:
    from lab.trixie_chroot import run_in

    for password in ("Short1", "a much longer passphrase with spaces and ünïcödé, past 64 bytes " * 2):
        hashed = hash_password(password, scheme)  # type: ignore[arg-type]
        assert hashed.startswith("{" + scheme + "}")
        ok = run_in(world.pg.root, ["doveadm", "pw", "-t", hashed, "-p", password])
        assert ok.returncode == 0 and "verified" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
        bad = run_in(world.pg.root, ["doveadm", "pw", "-t", hashed, "-p", password[:-1]])
        assert bad.returncode != 0


def test_a_changed_password_survives_a_rerun(world: World) -> None:
    address = "bob@sams.test"
    local, _, domain = address.partition("@")
    changed = "user-chosen passphrase"
    changed_hash = "{ARGON2ID}" + PasswordHasher(parallelism=1).hash(changed)
    world.pg.run(
        f"UPDATE users SET password_hash = '{changed_hash}' WHERE local_part = '{local}' AND domain = '{domain}'"
    )
    world.vault.secrets.kv.v2.create_or_update_secret(
        path=f"{PREFIX}/{domain}/{local}", secret={"password": changed}, mount_point=MOUNT
    )
    before = {a: world.password(a) for a in ALL}
    # Lose the provider's state too: it must then read the existing secrets, never overwrite them.
    # Only its own: a regenerated backup password would (rightly) be refused by the backup key's Vault write.
    del world.store.values[f"{mockrun.DYNAMIC}::users-secrets"]
    assert world.up()["first_passwords"] == []  # every mailbox has a password: none is set again
    world.up()
    assert world.hash_of(address) == changed_hash
    assert {a: world.password(a) for a in ALL} == before


def test_preview_names_who_will_be_offboarded_and_writes_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.write_list({"sams.test": ["alice", "bob"], "other.test": DOMAINS["other.test"]})
    versions = world.vault.secrets.kv.v2.read_secret_metadata(path=f"{PREFIX}/sams.test/carol", mount_point=MOUNT)
    state = json.dumps(world.store.values, sort_keys=True)
    with caplog.at_level(logging.WARNING):
        world.program(preview=True)
    notices = [r.getMessage() for r in caplog.records if "offboarded" in r.getMessage()]
    assert notices and notices[0].endswith(": carol@sams.test"), notices
    assert "/var/mail/archive/<domain>/<user>-<date>" in notices[0]
    after = world.vault.secrets.kv.v2.read_secret_metadata(path=f"{PREFIX}/sams.test/carol", mount_point=MOUNT)
    assert after["data"]["current_version"] == versions["data"]["current_version"]
    assert json.dumps(world.store.values, sort_keys=True) == state


def test_offboarding_archives_mail_and_deletes_the_secret(world: World) -> None:
    maildir = world.vmail / "sams.test" / "carol"
    (maildir / "cur").mkdir(parents=True)
    (maildir / "cur" / "1.msg").write_text("Subject: keep me\n\nhello\n")
    # Her calendar (Radicale's folder, named by her login) and bob's, who stays.
    for user in ("carol", "bob"):
        (world.dav / f"{user}@sams.test" / "calendar").mkdir(parents=True)
        (world.dav / f"{user}@sams.test" / "calendar" / "e.ics").write_text(f"BEGIN:VCALENDAR\n{user}\n")
        webmail_login(world, f"{user}@sams.test")
    summary = world.up()
    today = dt.date.today().isoformat()
    assert summary["disabled"] == ["carol@sams.test"]
    dest = world.archive / "sams.test" / f"carol-{today}"
    assert summary["archived"] == {"carol@sams.test": str(dest)}
    assert (dest / "cur" / "1.msg").read_text().startswith("Subject: keep me")
    assert not maildir.exists()
    # A later carol@sams.test finds no calendar of hers; the archive keeps it beside her mail.
    assert not (world.dav / "carol@sams.test").exists()
    assert (world.archive / "sams.test" / f"carol-{today}.dav" / "calendar" / "e.ics").read_text().endswith("carol\n")
    assert (world.dav / "bob@sams.test" / "calendar" / "e.ics").exists()
    # Her webmail row (identities, contacts, settings) is renamed: a later carol@ gets a row of her own.
    assert summary["webmail_archived"] == {"carol@sams.test": f"carol@sams.test#left-{today}"}
    assert webmail_rows(world) == [("bob@sams.test", 1), (f"carol@sams.test#left-{today}", 1)]
    with pytest.raises(hvac.exceptions.InvalidPath):  # the secret, its versions and its metadata
        world.vault.secrets.kv.v2.read_secret_metadata(path=f"{PREFIX}/sams.test/carol", mount_point=MOUNT)
    row = world.pg.run("SELECT active, password_hash IS NULL FROM users WHERE local_part = 'carol'")
    assert row.strip() == "f|t"
    # Everybody else is untouched.
    assert world.hash_of("bob@sams.test") and world.password("alice@sams.test")


def test_removing_a_whole_domain(world: World) -> None:
    for user in DOMAINS["other.test"]:
        (world.vmail / "other.test" / user / "new").mkdir(parents=True)
    world.write_list({"sams.test": ["alice", "bob"]})
    summary = world.up()
    assert summary["disabled"] == [f"{u}@other.test" for u in DOMAINS["other.test"]]
    assert sorted(p.name.rsplit("-", 3)[0] for p in (world.archive / "other.test").iterdir()) == DOMAINS["other.test"]
    assert not (world.vmail / "other.test").exists()
    assert world.pg.run("SELECT active FROM domains WHERE name = 'other.test'").strip() == "f"
    keys = world.vault.secrets.kv.v2.list_secrets(path=PREFIX, mount_point=MOUNT)["data"]["keys"]
    assert keys == ["sams.test/"]


def test_re_adding_a_user_gives_a_new_working_password(world: World) -> None:
    world.write_list({"sams.test": ["alice", "bob", "carol"]})
    assert world.up()["first_passwords"] == ["carol@sams.test"]
    hashed = world.hash_of("carol@sams.test")
    assert hashed and verifies(hashed, world.password("carol@sams.test"))


def _rotate(world: World, *who: str) -> subprocess.CompletedProcess[str]:
    cfg = {**mockrun.stack_config("lab"), **_encoded(world.overrides())}
    return subprocess.run(
        [sys.executable, "-m", "components.users", "rotate", "--stack", "lab", *who, "--psql", world.pg.psql]
        + ["--config-json", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
        cwd=mockrun.PROJECT_DIR,
        env={"VAULT_TOKEN": world.bao.token, "PATH": "/usr/bin:/bin"},
    )


def test_rotate_one_user(world: World) -> None:
    old = {a: (world.password(a), world.hash_of(a)) for a in ("alice@sams.test", "bob@sams.test")}
    result = _rotate(world, "--user", "alice@sams.test")
    assert result.returncode == 0, result.stderr
    new_pw, new_hash = world.password("alice@sams.test"), world.hash_of("alice@sams.test")
    assert new_pw != old["alice@sams.test"][0] and new_hash and verifies(new_hash, new_pw)
    assert (world.password("bob@sams.test"), world.hash_of("bob@sams.test")) == old["bob@sams.test"]
    assert new_pw not in result.stdout + result.stderr


def test_rotate_all_and_unknown_user(world: World) -> None:
    before = {a: world.password(a) for a in ("alice@sams.test", "bob@sams.test", "carol@sams.test")}
    assert _rotate(world, "--all").returncode == 0
    for address, pw in before.items():
        now, hashed = world.password(address), world.hash_of(address)
        assert now != pw and hashed and verifies(hashed, now)
    bad = _rotate(world, "--user", "nobody@sams.test")
    assert bad.returncode != 0 and "nobody@sams.test" in bad.stderr


def test_rotation_rolls_vault_back_when_the_database_fails(world: World) -> None:
    pw = world.password("alice@sams.test")
    cfg = {**mockrun.stack_config("lab"), **_encoded(world.overrides())}
    result = subprocess.run(
        [sys.executable, "-m", "components.users", "rotate", "--user", "alice@sams.test", "--psql", "false"]
        + ["--config-json", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
        cwd=mockrun.PROJECT_DIR,
        env={"VAULT_TOKEN": world.bao.token, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0 and "Vault restored" in result.stderr
    assert world.password("alice@sams.test") == pw


def test_an_archive_on_another_filesystem_keeps_every_owner(tmp_path: Path) -> None:
    """The archive is on the mail volume, Radicale's folder on the root one: shutil.move copies, and
    the copies would be root's. /dev/shm (tmpfs) is another filesystem than tmp_path here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sams_users", TOOL_SOURCE)
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    src = tmp_path / "carol@sams.test"
    (src / "calendar").mkdir(parents=True)
    (src / "calendar" / "e.ics").write_text("BEGIN:VCALENDAR\n")
    (src / "calendar" / "link").symlink_to("e.ics")
    for path in (src, src / "calendar", src / "calendar" / "e.ics", src / "calendar" / "link"):
        os.lchown(path, 4242, 4243)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        assert os.stat(shm).st_dev != os.stat(tmp_path).st_dev
        dest = Path(shm) / "carol-2026-12-08.dav"
        tool.move_keeping_owners(str(src), str(dest))
        owners = {
            p.relative_to(dest).as_posix(): (p.lstat().st_uid, p.lstat().st_gid) for p in [dest, *dest.rglob("*")]
        }
    assert owners == {".": (4242, 4243), "calendar": (4242, 4243), "calendar/e.ics": (4242, 4243),
                      "calendar/link": (4242, 4243)}  # fmt: skip
    assert not src.exists()


def test_archives_are_purged_after_the_retention_only(world: World) -> None:
    later = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    kept = world.tool("purge", "", "--today", later)
    assert kept["purged"] == []
    much_later = (dt.date.today() + dt.timedelta(days=31)).isoformat()
    gone = world.tool("purge", "", "--today", much_later)
    # carol's Maildir, calendars and webmail row, other.test's three Maildirs.
    assert len(gone["purged"]) == 6, gone["purged"]
    assert gone["purged"][-1] == f"{world.webmail_db}:carol@sams.test#left-{dt.date.today().isoformat()}"
    assert all("/archive/" in p for p in gone["purged"][:-1])


def test_a_user_with_calendars_and_no_mail_is_archived_too(world: World) -> None:
    """Runs after the purge above: the archive holds only what this test makes."""
    today = dt.date.today().isoformat()
    (world.dav / "carol@sams.test" / "contacts").mkdir(parents=True)
    # An archive of the same day is there already (she left and came back today): the next name.
    (world.archive / "sams.test" / f"carol-{today}").mkdir(parents=True)
    # She came back and used the webmail: her second row is archived under the next name.
    webmail_login(world, f"carol@sams.test#left-{today}")
    webmail_login(world, "carol@sams.test")
    world.write_list({"sams.test": ["alice", "bob"]})
    try:
        summary = world.up()
    finally:
        world.write_list({"sams.test": ["alice", "bob", "carol"]})
    dest = world.archive / "sams.test" / f"carol-{today}.1"
    assert summary["archived"] == {"carol@sams.test": str(dest)}
    assert (world.archive / "sams.test" / f"carol-{today}.1.dav" / "contacts").is_dir() and not dest.exists()
    assert not (world.dav / "carol@sams.test").exists()
    assert summary["webmail_archived"] == {"carol@sams.test": f"carol@sams.test#left-{today}.1"}
    # The retention takes every kind.
    much_later = (dt.date.today() + dt.timedelta(days=31)).isoformat()
    gone = world.tool("purge", "", "--today", much_later)
    assert sorted(Path(p).name for p in gone["purged"]) == [
        f"carol-{today}",
        f"carol-{today}.1.dav",
        f"roundcube.db:carol@sams.test#left-{today}",
        f"roundcube.db:carol@sams.test#left-{today}.1",
    ]
    assert webmail_rows(world) == [("bob@sams.test", 1)]  # her identities went with her row
    assert world.up()["first_passwords"] == ["carol@sams.test"]  # back on the list for the tests below


@pytest.mark.parametrize(
    ("action", "stdin", "says"),
    [
        ("set-hashes", '{"hashes": {}}', "sams-users set-hashes: stdin names no address, nothing changed"),
        ("set-hashes", '{"hashes": ', "sams-users set-hashes: stdin is not JSON (Expecting value, line 1)"),
        ("sync", '["alice@sams.test"]', "sams-users sync: stdin is not a JSON object"),
        ("sync", '{"removed": "alice@sams.test"}', 'stdin\'s "removed" is not a list of addresses'),
        ("set-hashes", '{"hashes": {"alice@sams.test": 1}}', 'stdin\'s "hashes" is not an object of strings'),
        (
            "set-hashes",
            '{"hashes": {"Alice@sams.test": "{SHA512-CRYPT}$6$x"}}',
            "not a mailbox address: 'Alice@sams.test'",
        ),
    ],
)
def test_bad_input_on_stdin_is_named_and_changes_nothing(world: World, action: str, stdin: str, says: str) -> None:
    world.up()  # whatever ran before: a list applied, hashes stored
    rows = "SELECT local_part, domain, active, password_hash FROM users ORDER BY 1, 2"
    before = world.pg.run(rows)
    assert before.count("$6$") + before.count("$argon2id$") >= 3  # the tool has hashes it could have changed
    argv = [sys.executable, str(TOOL_SOURCE), action, "--psql", world.pg.psql]
    argv += ["--vmail-root", str(world.vmail), "--archive-root", str(world.archive)]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and says in result.stderr, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert world.pg.run(rows) == before
