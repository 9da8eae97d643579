"""Users in the lab: the program (its dynamic provider's real code, under mocks) writes the
mailbox passwords to a real OpenBao, the users step puts their hashes into the host's PostgreSQL,
and a user logs in over IMAPS from the "internet" with the password read back from OpenBao.

    python -m pytest -q lab/tests/test_users_lab.py      # boots the lab itself; needs root
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import hvac
import pytest

import mockrun
from components.database import schema
from components.dav.plan import LISTEN_HOST, LISTEN_PORT
from components.dav.plan import PRINCIPALS as DAV_PRINCIPALS
from components.dav.plan import USER as DAV_USER
from components.users.steps import ARCHIVE_ROOT, TOOL
from components.webmail.plan import ROUNDCUBE_DB
from lab import acme, program
from lab.hostcmd import PSQL, sh
from lab.netclient import in_netns, web_login
from lab.session import Lab
from lab.spec import NAMES
from tests.users.conftest import Bao
from tests.users.conftest import bao as bao  # the OpenBao session fixture, shared

pytestmark = pytest.mark.lab

IMAP_LOGIN = """
import imaplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
imap = imaplib.IMAP4_SSL(sys.argv[1], 993, ssl_context=ctx, timeout=20)
try:
    imap.login(sys.argv[2], sys.stdin.read())
except imaplib.IMAP4.error as exc:
    print("LOGIN FAILED", exc); sys.exit(3)
typ, _ = imap.select("INBOX")
print(typ)
if len(sys.argv) > 3:  # how many INBOX messages carry this Subject
    print("FOUND", len(imap.search(None, "HEADER", "Subject", sys.argv[3])[1][0].split()))
imap.logout()
"""


def imap_login(lab: Lab, user: str, password: str, subject: str = "") -> subprocess.CompletedProcess[str]:
    """From the admin's namespace to the host's public address, like any mail client; with a
    subject, also counts the INBOX messages that carry it ("FOUND n")."""
    return subprocess.run(
        ["ip", "netns", "exec", NAMES.ns_admin, "python3", "-c", IMAP_LOGIN, lab.spec.public_ipv4, user]
        + ([subject] if subject else []),
        input=password,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def up(lab: Lab, bao: Bao, mail_list: Path | None = None) -> program.ApplyReport:
    """`pulumi up` of the lab stack with Vault (the stack's mail list unless another is named)."""
    keys = program.lab_keys(lab.paths)
    config = {**program._config(keys), "sams:vault": json.dumps({"address": bao.address})}
    if mail_list:
        config["sams:mailList"] = str(mail_list)
    run = mockrun.run(
        program.STACK,
        config=config,
        secret_config={"sams:vaultToken": bao.token},
        store=mockrun.KeyStore(lab.paths.root / "keystore.json"),
        dynamic=True,
    )
    return program.apply(run, lab.paths, shell=lab.shell, images=lab.images)


def vault_password(bao: Bao, address: str) -> str:
    local, domain = address.split("@")
    client = hvac.Client(url=bao.address, token=bao.token)
    secret = client.secrets.kv.v2.read_secret_version(
        path=f"mail/users/{domain}/{local}", mount_point="secret", raise_on_deleted_version=True
    )
    return str(secret["data"]["data"]["password"])


@pytest.fixture(scope="module")
def onboarded(lab: Lab, bao: Bao) -> Iterator[program.ApplyReport]:
    report = up(lab, bao)
    assert "users-users" in report.ran
    yield report


def test_sams_users_flushed_dovecots_auth_cache(onboarded: program.ApplyReport) -> None:
    """After writing hashes, sams-users made the running Dovecot drop its cached users (doveadm
    answered): a first password counts at once, even for an address whose lookup failed before."""
    summary = onboarded.summaries["users-users"]
    assert summary["action"] == "sync" and summary["auth_cache_flushed"] is True, summary


def test_onboarded_user_logs_in_with_the_password_from_vault(
    lab: Lab, bao: Bao, onboarded: program.ApplyReport
) -> None:
    password = vault_password(bao, "alice@sams.test")
    ok = imap_login(lab, "alice@sams.test", password)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    wrong = imap_login(lab, "alice@sams.test", password[:-1] + ("a" if password[-1] != "a" else "b"))
    assert wrong.returncode == 3, wrong.stdout + wrong.stderr


def test_purge_timer_is_enabled(lab: Lab, onboarded: program.ApplyReport) -> None:
    out = lab.shell.run(["systemctl", "is-enabled", "sams-archive-purge.timer"], check=False)
    assert out.stdout.decode().strip() == "enabled"
    # The unit the timer starts runs as rendered (its archive root and Roundcube's database).
    sh(lab, "systemctl start sams-archive-purge.service")
    assert sh(lab, "systemctl show -P Result sams-archive-purge.service").strip() == "success"


def runbook_commands(heading: str) -> str:
    """The shell block under a heading of the user lifecycle runbook, as an admin would paste it."""
    text = (Path(program.__file__).parents[1] / "docs" / "runbooks" / "user_lifecycle.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, f"no shell block under {heading!r}"
    return block.group(1)


def test_offboarding_archives_the_mailbox_and_the_runbook_restores_it(
    lab: Lab, bao: Bao, onboarded: program.ApplyReport, tmp_path: Path
) -> None:
    """carol leaves the list: her Maildir moves to the archive with her mail, she can no longer log
    in. The runbook's commands put it back; re-adding her gives a new password from Vault and her
    old mail in INBOX."""
    user, subject = "carol@other.test", f"kept-{uuid.uuid4().hex[:12]}"
    sh(lab, f"doveadm save -u {user}", stdin=f"Subject: {subject}\n\nkeep me\n")
    # Her first DAV login makes her collections (Radicale's predefined calendar and address book), her
    # first webmail login her row in Roundcube's database.
    assert dav_depth1(lab, user, vault_password(bao, user))[0] == 207
    principal = f"{DAV_PRINCIPALS}/{user}"
    # Radicale writes these once, when it makes a collection: the same times after the runbook's
    # restore mean her own collections came back (a new login would make new ones).
    props = f"find {principal} -name .Radicale.props -printf '%P %T@\\n' | sort"
    made = sh(lab, props)
    assert made.count(".Radicale.props") == 2, made
    cafile = tmp_path / "pebble-issuers.pem"
    cafile.write_text(acme.issuer_pems(lab.paths, lab.spec.inet_ipv4))
    host = lab.settings.config.hostname
    login = in_netns(NAMES.ns_admin, {host: lab.spec.vpn_host}, web_login, host, str(cafile), None, user,
                     vault_password(bao, user))  # fmt: skip
    assert login[0] == "in", login
    assert user in webmail_users(lab)
    stack_list = Path(program.__file__).parents[1] / "stacks" / "lab" / "mail_list.yml"
    without = tmp_path / "mail_list.yml"
    without.write_text(stack_list.read_text().replace("      - carol\n", ""))
    assert "carol" not in without.read_text()
    try:
        gone = up(lab, bao, without).summaries["users-users"]
        archived = gone["archived"][user]
        assert gone["disabled"] == [user] and re.fullmatch(rf"{ARCHIVE_ROOT}/other\.test/carol-[\d-]{{10}}", archived)
        found = sh(lab, f"grep -rl {subject} {archived}", check=False)
        assert "/Maildir/" in found, found
        assert lab.shell.run(["sudo", "-n", "test", "-e", "/var/mail/vmail/other.test/carol"], check=False).returncode
        # Her calendars left with her: beside the Maildir, Radicale's as they were.
        assert lab.shell.run(["sudo", "-n", "test", "-e", principal], check=False).returncode
        kept = sh(lab, f"find {archived}.dav -mindepth 1 -maxdepth 1 -type d -printf '%f %u\\n' | sort")
        assert kept.strip().split("\n") == [f"calendar {DAV_USER}", f"contacts {DAV_USER}"], kept
        # Her webmail row is renamed: a new user of her address would start with a row of their own.
        left = gone["webmail_archived"][user]
        assert re.fullmatch(rf"{re.escape(user)}#left-[\d-]{{10}}", left) and user not in webmail_users(lab), left
        assert left in webmail_users(lab)
        refused = imap_login(lab, user, "whatever-she-had")
        assert refused.returncode == 3, refused.stdout + refused.stderr
        restore = runbook_commands("Remove a mailbox").replace("example.org", "other.test")
        restore = restore.replace("dave-2026-11-24", archived.rsplit("/", 1)[1]).replace("dave", "carol")
        restore = restore.replace("#left-2026-11-24", left.split("@", 1)[1].removeprefix("other.test"))
        lab.shell.run(["sh", "-ec", restore])
    finally:
        back = up(lab, bao)  # the stack's own list again, carol in it
    assert back.summaries["users-users"]["first_passwords"] == [user], back.summaries
    assert back.summaries["users-users"]["disabled"] == []
    seen = imap_login(lab, user, vault_password(bao, user), subject)
    assert seen.returncode == 0 and "FOUND 1" in seen.stdout, seen.stdout + seen.stderr
    # The runbook put her collections back: Radicale lists them for her new password.
    status, listing = dav_depth1(lab, user, vault_password(bao, user))
    assert status == 207 and f"/{quote(user)}/calendar/" in listing and f"/{quote(user)}/contacts/" in listing
    assert sh(lab, props) == made
    assert user in webmail_users(lab) and not [u for u in webmail_users(lab) if "#left-" in u]


def webmail_users(lab: Lab) -> list[str]:
    return sh(lab, f"sqlite3 {ROUNDCUBE_DB} 'SELECT username FROM users'").split()


DAV_LISTEN = f"{LISTEN_HOST}:{LISTEN_PORT}"


def dav_depth1(lab: Lab, user: str, password: str) -> tuple[int, str]:
    """PROPFIND on the user's DAV root with Depth 1, at Radicale itself on the host's loopback."""
    out = sh(
        lab,
        f"curl -sS -o /tmp/sams-dav.xml -w '%{{http_code}}' --netrc-file /dev/stdin -X PROPFIND -H 'Depth: 1' "
        f"http://{DAV_LISTEN}/{user}/; cat /tmp/sams-dav.xml; rm -f /tmp/sams-dav.xml",
        stdin=f"machine {DAV_LISTEN.split(':')[0]} login {user} password {password}\n",
    )
    return int(out[:3]), out[3:]


def test_a_flush_that_cannot_reach_dovecots_auth_process_fails_loudly(lab: Lab, onboarded: program.ApplyReport) -> None:
    """The real doveadm, with the auth-master socket moved away, exits 0 (Dovecot 2.4.1): the
    postgres step's flush and sams-users still see the failure. sync fails naming `pulumi up`;
    set-hashes (the rotation) keeps the stored hash and warns."""
    where = "local_part = 'alice' AND domain = 'sams.test'"
    current = sh(lab, f"{PSQL} -At", stdin=f"SELECT password_hash FROM users WHERE {where};").strip()
    assert current.startswith("{"), current

    def on_host(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[bytes]:
        return lab.shell.run(["sudo", "-n", *argv], stdin=stdin, check=False)

    socket = "/run/dovecot/auth-master"
    on_host(["mv", socket, f"{socket}.away"])
    try:
        raw = on_host(["doveadm", "auth", "cache", "flush"])
        assert raw.returncode == 0 and b"Error: auth-master" in raw.stderr, raw  # the quirk both guard against
        step = on_host(["sh", "-eu", "-c", schema.FLUSH_DOVECOT_AUTH_CACHE])
        assert step.returncode == 1 and b"run pulumi up again" in step.stderr, step
        sync = on_host(["/usr/bin/python3", TOOL, "sync"], "{}")
        assert sync.returncode == 1 and b"Run `pulumi up` again" in sync.stderr, sync
        rotate = on_host(["/usr/bin/python3", TOOL, "set-hashes"], json.dumps({"hashes": {"alice@sams.test": current}}))
        assert rotate.returncode == 0 and b"sams-users: warning:" in rotate.stderr, rotate
        assert json.loads(rotate.stdout)["auth_cache_flushed"] is False
    finally:
        on_host(["mv", f"{socket}.away", socket])
    again = on_host(["sh", "-eu", "-c", schema.FLUSH_DOVECOT_AUTH_CACHE])
    assert again.returncode == 0 and again.stderr == b"", again
