"""The schema, roles and lookup queries against a real PostgreSQL 17, and Dovecot on top of it.

In a scratch trixie tree with every mail step installed: PostgreSQL 17 runs on its unix socket
only (listen_addresses = '', so nothing listens on the host's loopback), the database step's SQL
is applied twice (it must be idempotent), then

  * Postfix's four lookup tables are queried with postmap, through the rendered .cf files
    (only `hosts` is pointed at the socket), with the passwords roles.sql set;
  * Dovecot runs from the rendered dovecot.conf with every inet listener switched off, and
    answers `doveadm auth test` / `doveadm user`, and delivers over its LMTP socket, including
    the over-quota answer.

    sudo .venv/bin/python -m pytest -m chroot tests/mailcore
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.database import schema
from components.database.roles import PASSWORD_CHANGER
from components.mail import services
from components.remote.steps import StepSpec
from lab.trixie_chroot import run_in
from settings.mail_list import MailList
from tests.mailcore.conftest import DUMMY_LATE, declare_inactive, install_step, run_step_script

pytestmark = pytest.mark.chroot

PG_BIN = "/usr/lib/postgresql/17/bin"
PG_DATA = "/var/lib/postgresql/17/main"
PG_CONF = "/etc/postgresql/17/main"
PG_SOCKET_DIR = "/var/run/postgresql"
USER_PASSWORD = "correct horse battery staple"


def _ok(root: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    result = run_in(root, list(argv), env=env)
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _schema_step(mail: MailList) -> StepSpec:
    """The database step as the postgres step would run it, psql reaching the local socket."""
    owner_pw = "$SAMS_LATE_" + schema.password_late_name(schema.OWNER)
    return StepSpec(
        name="postgres-schema",
        files=schema.schema_files(mail),
        late_values=tuple(schema.password_late_name(r) for r in (schema.OWNER, *schema.READERS)),
        script=schema.apply_script(
            superuser_psql="runuser -u postgres -- psql",
            owner_psql=f'PGPASSWORD="{owner_pw}" psql -h {PG_SOCKET_DIR} -U {schema.OWNER} -d {schema.DB_NAME}',
        ),
    )


@pytest.fixture(scope="module")
def db_root(mail_root: Path, lab_settings) -> Iterator[Path]:
    """mail_root with PostgreSQL running (socket only) and the schema applied twice."""
    root = mail_root
    # Dovecot runs here only when a test starts it by hand: the schema step's cache flush (which
    # fails where Dovecot's auth process cannot be reached) is skipped, as on a host without Dovecot.
    declare_inactive(root, "dovecot")
    # Passwords are checked on the socket too, so the lookups prove roles.sql set what the
    # daemons' files carry; the superuser keeps peer access for roles.sql.
    # The password changer has no password: like the container's local socket, this one trusts it.
    (root / PG_CONF.lstrip("/") / "pg_hba.conf").write_text(
        f"local all postgres peer\nlocal {schema.DB_NAME} {PASSWORD_CHANGER} trust\nlocal all all scram-sha-256\n"
    )
    _ok(root, "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "2775", PG_SOCKET_DIR)
    opts = (
        f"-c config_file={PG_CONF}/postgresql.conf -c listen_addresses='' -c ssl=off -c dynamic_shared_memory_type=mmap"
    )
    _ok(
        root,
        "runuser",
        "-u",
        "postgres",
        "--",
        f"{PG_BIN}/pg_ctl",
        "-D",
        PG_DATA,
        "-o",
        opts,
        "-l",
        "/tmp/pg.log",
        "-w",
        "start",
    )
    try:
        spec = _schema_step(lab_settings.mail)
        for _ in range(2):  # a second run must change nothing and fail nowhere
            changed = install_step(root, spec, DUMMY_LATE)
            run_step_script(root, spec, DUMMY_LATE, changed)
        yield root
    finally:
        run_in(root, ["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", PG_DATA, "-m", "fast", "-w", "stop"])


def _psql(root: Path, role: str, sql: str) -> str:
    pw = DUMMY_LATE[schema.password_late_name(role)]
    return _ok(
        root,
        "psql",
        "-h",
        PG_SOCKET_DIR,
        "-U",
        role,
        "-d",
        schema.DB_NAME,
        "-XAtq",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
        env={"PGPASSWORD": pw},
    )


# --- schema and roles ------------------------------------------------------------------------------


def test_migrations_ran_once(db_root: Path) -> None:
    rows = _psql(db_root, schema.OWNER, "SELECT version, name FROM schema_version ORDER BY version").split()
    assert rows == [f"{m.version}|{m.name}" for m in schema.migrations()]


def test_mail_list_rows(db_root: Path) -> None:
    users = _psql(
        db_root, schema.OWNER, "SELECT local_part||'@'||domain||'='||quota_bytes FROM users ORDER BY 1"
    ).split()
    assert users == [
        f"alice@sams.test={100 * 1024**2}",
        f"bob@sams.test={100 * 1024**2}",
        f"carol@other.test={100 * 1024**2}",
        f"tiny@sams.test={1024**2}",
    ]


def test_postfix_role_cannot_read_password_hashes(db_root: Path) -> None:
    result = run_in(
        db_root,
        [
            "psql",
            "-h",
            PG_SOCKET_DIR,
            "-U",
            "postfix",
            "-d",
            schema.DB_NAME,
            "-XAtq",
            "-c",
            "SELECT password_hash FROM users",
        ],
        env={"PGPASSWORD": DUMMY_LATE["db_postfix_password"]},
    )
    assert result.returncode != 0 and "permission denied" in result.stderr


def test_readers_cannot_write(db_root: Path) -> None:
    for role in schema.READERS:
        result = run_in(
            db_root,
            ["psql", "-h", PG_SOCKET_DIR, "-U", role, "-d", schema.DB_NAME, "-XAtq", "-c", "DELETE FROM aliases"],
            env={"PGPASSWORD": DUMMY_LATE[schema.password_late_name(role)]},
        )
        assert result.returncode != 0 and "permission denied" in result.stderr


# --- Postfix lookups through the rendered tables ---------------------------------------------------


@pytest.fixture(scope="module")
def postmap(db_root: Path):
    """postmap -q through each rendered lookup file, with only `hosts` pointed at the socket."""
    for path in (db_root / services.PGSQL_DIR.lstrip("/")).glob("*.cf"):
        text = re.sub(r"^hosts = .*$", f"hosts = unix:{PG_SOCKET_DIR}", path.read_text(), flags=re.M)
        (db_root / "tmp" / path.name).write_text(text)

    def lookup(table: str, key: str) -> set[str] | None:
        result = run_in(db_root, ["postmap", "-q", key, f"pgsql:/tmp/{table}.cf"])
        assert result.returncode in (0, 1), result.stderr
        assert "warning" not in result.stderr, result.stderr
        return set(result.stdout.strip().split(",")) if result.returncode == 0 else None

    return lookup


def test_virtual_domains(postmap) -> None:
    assert postmap("virtual_mailbox_domains", "sams.test") == {"sams.test"}
    assert postmap("virtual_mailbox_domains", "other.test") == {"other.test"}
    assert postmap("virtual_mailbox_domains", "example.org") is None


def test_virtual_mailboxes(postmap) -> None:
    assert postmap("virtual_mailbox_maps", "alice@sams.test") == {"sams.test/alice/"}
    assert postmap("virtual_mailbox_maps", "carol@other.test") == {"other.test/carol/"}
    assert postmap("virtual_mailbox_maps", "carol@sams.test") is None
    assert postmap("virtual_mailbox_maps", "postmaster@sams.test") is None  # an alias, not a mailbox
    assert postmap("virtual_mailbox_maps", "alice") is None  # no domain: the query is not even run


def test_virtual_aliases(postmap) -> None:
    assert postmap("virtual_alias_maps", "team@sams.test") == {"alice@sams.test", "bob@sams.test"}
    assert postmap("virtual_alias_maps", "postmaster@other.test") == {"alice@sams.test"}
    assert postmap("virtual_alias_maps", "alice@sams.test") is None


def test_sender_login_maps(postmap) -> None:
    assert postmap("sender_login_maps", "alice@sams.test") == {"alice@sams.test"}
    assert postmap("sender_login_maps", "postmaster@sams.test") == {"alice@sams.test"}
    assert postmap("sender_login_maps", "postmaster@other.test") == {"alice@sams.test"}
    assert postmap("sender_login_maps", "team@sams.test") == {"alice@sams.test", "bob@sams.test"}
    assert postmap("sender_login_maps", "carol@other.test") == {"carol@other.test"}
    assert postmap("sender_login_maps", "nobody@sams.test") is None


def test_removed_user_is_deactivated_not_deleted(db_root: Path, postmap, lab_settings) -> None:
    mail = lab_settings.mail
    without_bob = mail.model_copy(
        update={
            "domains": [
                d.model_copy(
                    update={
                        "users": [u for u in d.users if u.name != "bob"],
                        "aliases": [a.model_copy(update={"to": [t for t in a.to if t != "bob"]}) for a in d.aliases],
                    }
                )
                for d in mail.domains
            ]
        }
    )
    try:
        (db_root / "tmp/mail_list.sql").write_text(schema.mail_list_sql(without_bob))
        _ok(
            db_root,
            "sh",
            "-c",
            f"psql -h {PG_SOCKET_DIR} -U {schema.OWNER} -d {schema.DB_NAME} -q < /tmp/mail_list.sql",
            env={"PGPASSWORD": DUMMY_LATE["db_sams_owner_password"]},
        )
        assert postmap("virtual_mailbox_maps", "bob@sams.test") is None
        assert postmap("virtual_alias_maps", "team@sams.test") == {"alice@sams.test"}
        assert _psql(db_root, schema.OWNER, "SELECT active FROM users WHERE local_part = 'bob'").strip() == "f"
    finally:
        (db_root / "tmp/mail_list.sql").write_text(schema.mail_list_sql(mail))
        _ok(
            db_root,
            "sh",
            "-c",
            f"psql -h {PG_SOCKET_DIR} -U {schema.OWNER} -d {schema.DB_NAME} -q < /tmp/mail_list.sql",
            env={"PGPASSWORD": DUMMY_LATE["db_sams_owner_password"]},
        )
    assert postmap("virtual_mailbox_maps", "bob@sams.test") == {"sams.test/bob/"}


# --- Dovecot on the real schema --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot(db_root: Path) -> Iterator[Path]:
    """Dovecot from the rendered config, SQL over the socket, no inet listener at all."""
    root = db_root
    for user in ("alice", "tiny"):
        hashed = _ok(root, "doveadm", "pw", "-s", "ARGON2ID", "-p", USER_PASSWORD).strip()
        assert hashed.startswith("{ARGON2ID}")
        _psql(root, schema.OWNER, f"UPDATE users SET password_hash = '{hashed}' WHERE local_part = '{user}'")
    sql = (root / services.DOVECOT_SQL_CONF.lstrip("/")).read_text()
    sql = sql.replace(f"pgsql {schema.DB_HOST} {{", f"pgsql {PG_SOCKET_DIR} {{")
    (root / "etc/dovecot/sql-test.conf.ext").write_text(sql)
    conf = (
        (root / "etc/dovecot/dovecot.conf")
        .read_text()
        .replace(services.DOVECOT_SQL_CONF, "/etc/dovecot/sql-test.conf.ext")
    )
    conf = re.sub(r"^(\s*port = )\d+$", r"\g<1>0", conf, flags=re.M)  # nothing listens on the host's network
    (root / "etc/dovecot/test.conf").write_text(conf)
    ports = _ok(root, "doveconf", "-c", "/etc/dovecot/test.conf", "-n")
    assert set(re.findall(r"inet_listener \S+ \{\s*port = (\d+)", ports)) == {"0"}
    # The daemon must not inherit our output pipes, or run_in would wait for it to exit.
    _ok(root, "sh", "-c", "dovecot -c /etc/dovecot/test.conf </dev/null >/dev/null 2>&1")
    try:
        auth = root / "var/spool/postfix" / services.AUTH_SOCKET
        for _ in range(100):
            if auth.exists() and (root / "var/spool/postfix" / services.LMTP_SOCKET).exists():
                break
            time.sleep(0.1)
        yield root
    finally:
        stop = run_in(root, ["doveadm", "-c", "/etc/dovecot/test.conf", "stop"], timeout=30)
        if stop.returncode != 0:
            run_in(root, ["sh", "-c", "kill $(cat /run/dovecot/master.pid)"], timeout=30)
        for _ in range(50):  # the overlay cannot be unmounted while Dovecot still runs in it
            if not (root / "run/dovecot/master.pid").exists():
                break
            time.sleep(0.1)


def _doveadm(root: Path, *args: str) -> tuple[int, str]:
    result = run_in(root, ["doveadm", "-c", "/etc/dovecot/test.conf", *args])
    return result.returncode, result.stdout + result.stderr


def test_dovecot_password_login(dovecot: Path) -> None:
    rc, out = _doveadm(dovecot, "auth", "test", "Alice@SAMS.test", USER_PASSWORD)
    assert rc == 0, out
    assert "user=alice@sams.test" in out  # normalised to the stored, lowercase address
    rc, out = _doveadm(dovecot, "auth", "test", "alice@sams.test", "wrong")
    assert rc != 0
    rc, out = _doveadm(dovecot, "auth", "test", "bob@sams.test", USER_PASSWORD)  # no password set yet
    assert rc != 0


def test_dovecot_userdb_quota_and_home(dovecot: Path) -> None:
    rc, out = _doveadm(dovecot, "user", "-f", "home", "alice@sams.test")
    assert rc == 0, out
    assert out.strip() == f"{services.VMAIL_ROOT}/sams.test/alice"
    rc, out = _doveadm(dovecot, "user", "tiny@sams.test")
    assert rc == 0, out
    assert re.search(r"quota_storage_size\s+1048576B", out), out
    rc, out = _doveadm(dovecot, "user", "nobody@sams.test")
    assert rc != 0


def _lmtp(root: Path) -> smtplib.LMTP:
    return smtplib.LMTP(str(root / "var/spool/postfix" / services.LMTP_SOCKET))


def test_lmtp_delivers_into_maildir(dovecot: Path) -> None:
    with _lmtp(dovecot) as lmtp:
        lmtp.sendmail("sender@example.org", ["alice+news@sams.test"], b"Subject: hi\r\n\r\nhello\r\n")
    new = dovecot / "var/mail/vmail/sams.test/alice/Maildir/new"
    assert len(list(new.iterdir())) == 1
    assert new.stat().st_uid == int(_ok(dovecot, "id", "-u", services.VMAIL_USER))


def test_lmtp_over_quota_answer(dovecot: Path) -> None:
    # Dovecot lets the message that crosses the quota in (quota_storage_grace); the next one is
    # refused at RCPT time (lmtp_rcpt_check_quota), permanently, with the configured text.
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 1100  # ~1.1 MB > tiny's 1 MB quota
    refused = None
    for _ in range(3):
        try:
            with _lmtp(dovecot) as lmtp:
                lmtp.sendmail("sender@example.org", ["tiny@sams.test"], big)
        except smtplib.SMTPRecipientsRefused as err:
            refused = err.recipients["tiny@sams.test"]
            break
    assert refused is not None, "tiny@ accepted three messages over its 1 MB quota"
    code, text = refused
    assert code == 552 and text.count(b"5.2.2") == 1 and b"Mailbox full" in text and b"quota" in text, refused


def test_lmtp_unknown_user_is_rejected(dovecot: Path) -> None:
    with _lmtp(dovecot) as lmtp, pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        lmtp.sendmail("sender@example.org", ["nobody@sams.test"], b"Subject: x\r\n\r\nx\r\n")
    assert "550" in str(err.value)


# --- the webmail's password change (components/webmail's sams-passwd) ------------------------------


def test_password_changer_can_only_call_its_function(db_root: Path) -> None:
    def as_changer(sql: str) -> tuple[int, str]:
        result = run_in(
            db_root, ["psql", "-h", PG_SOCKET_DIR, "-U", PASSWORD_CHANGER, "-d", schema.DB_NAME, "-XAtq", "-c", sql]
        )
        return result.returncode, result.stdout + result.stderr

    for sql in (
        "SELECT password_hash FROM users",
        "UPDATE users SET password_hash = NULL",
        "SELECT local_part FROM users",
        "DELETE FROM aliases",
    ):
        rc, out = as_changer(sql)
        assert rc != 0 and "permission denied" in out, (sql, out)
    # A hash in a scheme Dovecot would not treat as slow, or for nobody, changes nothing.
    assert as_changer("SELECT sams_set_password('bob@sams.test', '{PLAIN}x')") == (0, "f\n")
    assert as_changer("SELECT sams_set_password('nobody@sams.test', '{SHA512-CRYPT}$6$a$b')") == (0, "f\n")
    # bob has no password (receive-only until sams-users gives him one): he stays without.
    assert as_changer("SELECT sams_set_password('bob@sams.test', '{SHA512-CRYPT}$6$a$b')") == (0, "f\n")


@pytest.fixture(scope="module")
def passwd(dovecot: Path, lab_settings) -> Path:
    """sams-passwd installed as the webmail step installs it, its psql on the test's socket."""
    from components.webmail import steps as webmail

    root = dovecot
    for f in webmail.files(lab_settings):
        if f.path in (webmail.PASSWD_TOOL, webmail.POLICY_MODULE):
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
    config = {
        **webmail.passwd_config(lab_settings),
        "psql": ["psql", "-h", PG_SOCKET_DIR, "-U", PASSWORD_CHANGER, "-d", schema.DB_NAME],
    }
    (root / webmail.PASSWD_CONFIG.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / webmail.PASSWD_CONFIG.lstrip("/")).write_text(json.dumps(config))
    return root


def _change(root: Path, user: str, current: str, new: str) -> list[str]:
    """One poppassd conversation, as Roundcube's driver holds it, with sams-passwd on a socket."""
    from components.webmail.plan import PASSWD_TOOL

    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        ["chroot", str(root), "/usr/bin/python3", PASSWD_TOOL], stdin=theirs.fileno(), stderr=subprocess.PIPE, text=True
    )
    theirs.close()
    ours.settimeout(30)
    replies: list[str] = []
    with ours, ours.makefile("rwb") as stream:
        for line in (None, f"user {user}", f"pass {current}", f"newpass {new}"):
            if line is not None:
                stream.write(line.encode() + b"\r\n")
                stream.flush()
            reply = stream.readline().decode().strip()
            replies.append(reply)
            if not reply.startswith("2"):
                break
    _, err = proc.communicate(timeout=30)
    # The log names the user, never a password (a 5-letter one could be a word of the message).
    assert not any(pw in err for pw in (current, new) if len(pw) >= 10), err
    return replies


def test_sams_passwd_changes_the_password_at_once(passwd: Path) -> None:
    user, new = "tiny@sams.test", "Plum tree on the hill 42"
    # Dovecot caches the current password first: the change must evict it.
    assert _doveadm(passwd, "auth", "test", user, USER_PASSWORD)[0] == 0
    replies = _change(passwd, user, USER_PASSWORD, new)
    assert replies[-1] == "200 password changed", replies
    rc, out = _doveadm(passwd, "auth", "test", user, USER_PASSWORD)
    assert rc != 0, out
    rc, out = _doveadm(passwd, "auth", "test", user, new)
    assert rc == 0, out
    stored = _psql(passwd, schema.OWNER, "SELECT password_hash FROM users WHERE local_part = 'tiny'").strip()
    assert stored.startswith("{" + passwd_scheme() + "}")


def passwd_scheme() -> str:
    from settings.stack import DEFAULT_PASSWORD_SCHEME

    return DEFAULT_PASSWORD_SCHEME


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        ("wrong password", "Plum tree on the hill 43", "500 The current password is not correct."),
        (USER_PASSWORD, "short", "500 The new password is too short: use at least 10 characters."),
        (USER_PASSWORD, "1234567890", "500 The new password is too easy to guess"),
        (USER_PASSWORD, "alice alice alice", "500 The new password contains your address"),
        (USER_PASSWORD, USER_PASSWORD, "500 The new password is the same as the current one"),
    ],
)
def test_sams_passwd_refuses_with_a_reason(passwd: Path, current: str, new: str, expected: str) -> None:
    replies = _change(passwd, "alice@sams.test", current, new)
    assert replies[-1].startswith(expected), replies
    assert _doveadm(passwd, "auth", "test", "alice@sams.test", USER_PASSWORD)[0] == 0  # unchanged
