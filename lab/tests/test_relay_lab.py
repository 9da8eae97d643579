"""The smarthost path (sams:relay), on the lab host: what every host on a provider that blocks
outbound port 25 (Vultr and Oracle Cloud do by default) sends all its outbound mail through.

A relay on the lab's internet (lab/smarthost.py: TLS required, then AUTH with its one login, as a
mail provider's relay does) stands in for the provider's. The program is applied with sams:relay
pointing at it and the password as sams:relayPassword; a user's mail to another domain must leave
through it, signed, over TLS, logged in. With a wrong password the mail must wait in the queue (not
bounce) and say why, and go out once `up` has put the right password in place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import program, smarthost
from lab.dns import RECEIVER_DOMAIN
from lab.tests.conftest import Lab
from lab.tests.test_mail_e2e import World, sh, subject, world

pytestmark = pytest.mark.lab

LOGIN = "sams-lab@relay.example"
PASSWORD = "Relay-pass-1"
SUBMISSION = 587


def up(lab: Lab, password: str | None) -> program.ApplyReport:
    """`pulumi up` with sams:relay at the smarthost (and this password), or without a relay (None)."""
    overrides = {}
    if password is not None:
        relay = {"host": lab.spec.inet_ipv4, "port": SUBMISSION, "username": LOGIN}
        overrides = {"sams:relay": relay, "sams:relayPassword": password}
    run = program.lab_run(lab.paths, program.lab_keys(lab.paths), overrides)
    return program.apply(run, lab.paths, shell=lab.shell, images=lab.images)


def relayed(lab: Lab, host: smarthost.Smarthost, tag: str, wait: float = 60) -> bytes:
    """The message with `tag` in its Subject, once the smarthost has it (else Postfix's queue says why)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = [m for m in host.received() if f"Subject: {tag}".encode() in m]
        if found:
            (message,) = found
            return message
        time.sleep(0.5)
    raise AssertionError(f"nothing with {tag} reached the smarthost in {wait:.0f} s; the queue: {queued(lab)}")


def queued(lab: Lab) -> list[dict[str, Any]]:
    """Postfix's queue (postqueue -j): one object per message."""
    return [json.loads(line) for line in sh(lab, "postqueue -j").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def relay(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[smarthost.Smarthost]:
    host = smarthost.start(tmp_path_factory.mktemp("smarthost"), lab.spec.inet_ipv4, SUBMISSION, LOGIN, PASSWORD)
    try:
        yield host
    finally:
        smarthost.stop(host)


@pytest.fixture(scope="module")
def mail(lab: Lab, relay: smarthost.Smarthost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        report = up(lab, PASSWORD)
        assert {"mail-postfix"} <= set(report.ran), report.ran
        with world(lab, tmp_path_factory.mktemp("relay")) as w:
            yield w
    finally:
        up(lab, None)  # the stack's own state: no relay
        sh(lab, "postsuper -d ALL deferred >/dev/null 2>&1 || true")


def test_mail_to_another_domain_leaves_through_the_relay_over_tls_logged_in(
    mail: World, relay: smarthost.Smarthost
) -> None:
    tag = subject("relay")
    mail.submit(SUBMISSION, "alice@sams.test", [f"someone@{RECEIVER_DOMAIN}"], tag)
    got = relayed(mail.lab, relay, tag)
    head = got.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    assert f"X-Smarthost-Login: {LOGIN}" in head, head
    assert "X-Smarthost-TLS: TLSv1.3" in head or "X-Smarthost-TLS: TLSv1.2" in head, head
    assert f"X-Smarthost-Envelope: alice@sams.test -> someone@{RECEIVER_DOMAIN}" in head, head
    # Signed by OpenDKIM before it left: the relay forwards what the receiver will verify.
    assert "DKIM-Signature:" in head and "d=sams.test" in head, head


def test_a_wrong_relay_password_keeps_the_mail_queued_and_says_why(
    lab: Lab, mail: World, relay: smarthost.Smarthost
) -> None:
    up(lab, "not-the-password")
    tag = subject("relay-wrong-password")
    mail.submit(SUBMISSION, "alice@sams.test", [f"someone@{RECEIVER_DOMAIN}"], tag)
    deadline = time.monotonic() + 60
    waiting: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not waiting:
        waiting = [m for m in queued(lab) if m.get("queue_name") == "deferred"]
        time.sleep(0.5)
    (message,) = waiting
    (recipient,) = message["recipients"]
    assert "SASL authentication failed" in recipient["delay_reason"], recipient
    assert not [m for m in relay.received() if tag.encode() in m]
    # The right password: the waiting mail goes out (Postfix retries within minimal_backoff_time, 5 min;
    # the test flushes the queue instead of waiting).
    up(lab, PASSWORD)
    sh(lab, "postqueue -f")
    relayed(lab, relay, tag)
    assert queued(lab) == []
