"""The saved log queries (sams-logs, installed by the mail-base step; docs/logs.md) over the lab
host's real journal: each event made from the internet or a mail client shows up once, counted
where the runbook says."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator

import pytest

from components.mail.services import LOGS_TOOL
from lab.dns import SENDER_DOMAIN
from lab.hostcmd import sh
from lab.netclient import imap_login_from, message, mx_attempt
from lab.session import Lab
from lab.world import World, subject, world

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("logs")) as w:
        yield w


def query(lab: Lab, name: str) -> dict[tuple[str, ...], int]:
    """One saved query over the last 30 minutes, as rows (columns in order) -> count."""
    out = sh(lab, f"{LOGS_TOOL} {name} --since 30m --json")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {tuple(v for k, v in row.items() if k != "count"): row["count"] for row in rows}


def test_each_query_counts_what_just_happened(mail: World) -> None:
    lab = mail.lab
    user, inet = "alice@sams.test", lab.spec.inet_ipv4
    before = {name: query(lab, name) for name in ("auth-failures", "rejects", "deliveries", "senders")}

    # A mistyped IMAP password from the internet (a client that does not check the certificate will do).
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    reply = mail.inet(imap_login_from, mail.host, context, inet, user, "not-her-password")
    assert reply.startswith(b"a NO"), reply
    # A message for a mailbox that does not exist, from a remote MTA: refused during the session.
    ghost = f"ghost-{uuid.uuid4().hex[:8]}@sams.test"
    code, _ = mail.inet(mx_attempt, mail.host, f"someone@{SENDER_DOMAIN}", ghost, message("a", ghost, "x"))
    assert code == 550
    # alice submits a message to bob: one submission by her login, one local delivery.
    tag = subject("logs")
    mail.submit(587, user, ["bob@sams.test"], tag)
    assert len(mail.read("bob@sams.test", tag)) == 1
    time.sleep(2)  # the journal takes the last lines

    def grew(name: str, key: tuple[str, ...]) -> int:
        return query(lab, name).get(key, 0) - before[name].get(key, 0)

    assert grew("auth-failures", ("imap", inet, user)) == 1
    reason = ("550 5.1.1 Recipient address rejected: User unknown in virtual mailbox table",)
    assert grew("rejects", reason) == 1, query(lab, "rejects")
    assert grew("senders", (user,)) == 1
    assert grew("deliveries", ("sams.test", "sent")) >= 1  # Postfix may deliver other local mail meanwhile
    sh(lab, f"fail2ban-client set dovecot unbanip {inet} >/dev/null 2>&1 || true")


def test_the_table_form_is_readable(mail: World) -> None:
    out = sh(mail.lab, f"{LOGS_TOOL} senders --since 30m")
    assert out.splitlines()[0].split() == ["count", "login"], out
    assert "alice@sams.test" in out
