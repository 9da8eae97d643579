"""Users in the lab: the program (its dynamic provider's real code, under mocks) writes the
mailbox passwords to a real OpenBao, the users step puts their hashes into the host's PostgreSQL,
and a user logs in over IMAPS from the "internet" with the password read back from OpenBao.

    python -m pytest -q lab/tests/test_users_lab.py      # boots the lab itself; needs root
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import hvac
import pytest

import mockrun
from lab import program
from lab.spec import NAMES
from lab.tests.conftest import Lab
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
print(typ); imap.logout()
"""


def imap_login(lab: Lab, user: str, password: str) -> subprocess.CompletedProcess[str]:
    """From the admin's namespace to the host's public address, like any mail client."""
    return subprocess.run(
        ["ip", "netns", "exec", NAMES.ns_admin, "python3", "-c", IMAP_LOGIN, lab.spec.public_ipv4, user],
        input=password,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture(scope="module")
def onboarded(lab: Lab, bao: Bao) -> Iterator[program.ApplyReport]:
    keys = program.lab_keys(lab.paths)
    config = {**program._config(keys), "sams:vault": json.dumps({"address": bao.address})}
    run = mockrun.run(
        program.STACK,
        config=config,
        secret_config={"sams:vaultToken": bao.token},
        store=mockrun.KeyStore(lab.paths.root / "keystore.json"),
        dynamic=True,
    )
    report = program.apply(run, lab.paths, shell=lab.shell, images=lab.images)
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
    client = hvac.Client(url=bao.address, token=bao.token)
    secret = client.secrets.kv.v2.read_secret_version(
        path="mail/users/sams.test/alice", mount_point="secret", raise_on_deleted_version=True
    )
    password = secret["data"]["data"]["password"]
    ok = imap_login(lab, "alice@sams.test", password)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    wrong = imap_login(lab, "alice@sams.test", password[:-1] + ("a" if password[-1] != "a" else "b"))
    assert wrong.returncode == 3, wrong.stdout + wrong.stderr


def test_purge_timer_is_enabled(lab: Lab, onboarded: program.ApplyReport) -> None:
    out = lab.shell.run(["systemctl", "is-enabled", "sams-archive-purge.timer"], check=False)
    assert out.stdout.decode().strip() == "enabled"
