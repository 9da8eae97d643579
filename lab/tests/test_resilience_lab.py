"""The host under faults a hypervisor sees (issue 21, item 7): a full mail disk.

The lab plays the disk: Postfix's queue and the Maildirs are on one size-bounded volume
(lab/host.py's mail volume). Clients run in `sams-inet` with the helpers of test_mail_e2e.
"""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Iterator

import pytest

from components.mail import services
from lab.dns import SENDER_DOMAIN
from lab.tests.conftest import Lab
from lab.tests.test_mail_e2e import Reply, World, message, mx_attempt, sh, tls_context, world

pytestmark = pytest.mark.lab

MIB = 1 << 20
SENDER = f"someone@{SENDER_DOMAIN}"


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("resilience")) as w:
        yield w


def tag(kind: str) -> str:
    return f"resilience-{kind}-{uuid.uuid4().hex[:10]}"


# --- a full disk (item 7) ----------------------------------------------------------------------------

FILL = "/var/mail/sams-test-fill"
LIMITS = (("queue_minfree", 1.0), ("message_size_limit", 1.5))


def free_bytes(lab: Lab, path: str) -> int:
    return int(sh(lab, f"df -B1 --output=avail {path} | tail -n 1").strip())


def fill_until(lab: Lab, free: int) -> None:
    """Leave `free` bytes available on the mail volume (one preallocated file, grown or shrunk)."""
    have = int(sh(lab, f"stat -c %s {FILL} 2>/dev/null || echo 0").strip())
    size = max(0, have + free_bytes(lab, "/var/mail") - free)
    sh(lab, f"rm -f {FILL} && fallocate -l {size} {FILL}")


# IMAP's SEARCH takes the phrase quoted (imaplib sends arguments as they are).
WARNING = f'"{services.MAIL_SPACE_SUBJECT}"'


def submission_attempt(host: str, cafile: str, login: tuple[str, str], sender: str, rcpt: str, data: bytes) -> Reply:
    """A mail client on 587 (STARTTLS, AUTH): the first refusal from MAIL FROM on, else the reply to
    the message's final dot."""
    with smtplib.SMTP(host, 587, timeout=60, local_hostname="laptop.example") as client:
        client.starttls(context=tls_context(cafile))
        client.login(*login)
        for verb, arg in (("mail", f"FROM:<{sender}>"), ("rcpt", f"TO:<{rcpt}>"), ("data", "")):
            code, text = client.docmd(verb, arg)
            if code >= 400:
                return code, text.decode(errors="replace")
        client.send(smtplib.quotedata(data.decode()).encode() + b"\r\n.\r\n")
        code, text = client.getreply()
        return code, text.decode(errors="replace")


def both_ports(mail: World, data_tag: str) -> dict[int, Reply]:
    """One message to bob on port 25 (a remote MTA) and one on 587 (alice's client): the replies."""
    data = message(SENDER, "bob@sams.test", data_tag)
    mx = mail.inet(mx_attempt, mail.host, SENDER, "bob@sams.test", data)
    own = message("alice@sams.test", "bob@sams.test", data_tag)
    login = mail.login("alice@sams.test")
    sub = mail.inet(submission_attempt, mail.host, mail.cafile, login, "alice@sams.test", "bob@sams.test", own)
    return {25: mx, 587: sub}


def test_a_full_mail_disk_defers_senders_tells_the_postmaster_and_recovers(mail: World) -> None:
    lab = mail.lab
    # The queue and the Maildirs share one bounded filesystem (a real host's disk).
    devices = sh(lab, "stat -c %d /var/spool/postfix /var/mail").split()
    assert devices[0] == devices[1], devices
    assert int(sh(lab, "df -B1 --output=size /var/mail | tail -n 1")) < 64 << 30, "no bounded mail volume"
    # What smtpd enforces: queue_minfree, but never less than 1.5 x message_size_limit.
    minfree = max(int(sh(lab, f"postconf -h {name}").strip()) * factor for name, factor in LIMITS)
    sh(lab, f"rm -f {services.MAIL_SPACE_STATE}")
    try:
        # Low but not yet refusing: mail still flows, and the postmaster (an alias of alice) is told.
        fill_until(lab, int(minfree) + 60 * MIB)
        sh(lab, f"systemctl start {services.MAIL_SPACE_UNIT}.service")
        early = tag("low")
        low = both_ports(mail, early)
        assert [code for code, _ in low.values()] == [250, 250], low
        warned = mail.read("alice@sams.test", WARNING, want=1, wait=30)
        assert len(warned) == 1, "the postmaster got no warning of the filling disk"
        assert b"452 4.3.1" in warned[0] and b"queue_minfree" in warned[0]
        sh(lab, f"systemctl start {services.MAIL_SPACE_UNIT}.service")  # one warning per episode
        assert len(mail.read("alice@sams.test", WARNING, want=2, wait=5)) == 1

        # Full (below queue_minfree): both ports answer 4xx, never 5xx; nothing is taken to be lost.
        fill_until(lab, int(minfree) // 2)
        full = tag("full")
        refused = both_ports(mail, full)
        for port, (code, text) in refused.items():
            assert code == 452 and text.startswith("4.3.1"), (port, code, text)
        assert sh(lab, f"grep -rl {full} /var/spool/postfix/incoming /var/spool/postfix/active "
                       f"/var/spool/postfix/deferred || true").strip() == ""  # fmt: skip
    finally:
        sh(lab, f"rm -f {FILL}")
    # Space is back: with no step by anyone, the senders' retries are taken and delivered.
    retried = both_ports(mail, full)
    assert [code for code, _ in retried.values()] == [250, 250], retried
    assert len(mail.read("bob@sams.test", full, want=2, wait=60)) == 2
    assert len(mail.read("bob@sams.test", early, want=2, wait=60)) == 2
    sh(lab, f"systemctl start {services.MAIL_SPACE_UNIT}.service")
    assert sh(lab, f"test -e {services.MAIL_SPACE_STATE} && echo set || echo clear").strip() == "clear"
    assert sh(lab, f"systemctl is-enabled {services.MAIL_SPACE_UNIT}.timer").strip() == "enabled"
