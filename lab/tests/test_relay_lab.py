"""The smarthost path (sams:relay), on the lab host: what every host on a provider that blocks
outbound port 25 (Vultr and Oracle Cloud do by default) sends all its outbound mail through.

Relays on the lab's internet (lab/smarthost.py, named smtp.lab.example: TLS, then AUTH with one
login, as a mail provider's relay) stand in for the provider's: on 587 (STARTTLS) and 465 (implicit
TLS) with a certificate from the lab's CA, which the host trusts as it would a public CA's, and on
2525 with a certificate of its own making, as anyone on the path could present. The program is
applied with sams:relay pointing at one of them and the password as sams:relayPassword.

A user's mail to another domain must leave through the relay, signed, over TLS, logged in. With a
wrong password it must wait in the queue (not bounce) saying why, and go out once `up` has put the
right password in place. To a relay whose certificate does not verify, the password is never sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import acme, program, smarthost
from lab.dns import RECEIVER_DOMAIN, SMARTHOST
from lab.hostcmd import sh
from lab.session import Lab, up_with
from lab.world import World, subject, world

pytestmark = pytest.mark.lab

LOGIN = "sams-lab@relay.example"
PASSWORD = "Relay-pass-1"
TRUSTED = (587, 465)  # STARTTLS, implicit TLS (Postfix's smtp_tls_wrappermode)
UNTRUSTED = 2525


def up(lab: Lab, port: int | None, password: str = PASSWORD) -> program.ApplyReport:
    """`pulumi up` with sams:relay at the smarthost on `port` (and this password), or without one (None)."""
    if port is None:
        return up_with(lab, {})
    relay = {"host": SMARTHOST, "port": port, "username": LOGIN}
    return up_with(lab, {"sams:relay": relay, "sams:relayPassword": password})


def queued(lab: Lab) -> list[dict[str, Any]]:
    """Postfix's queue (postqueue -j): one object per message."""
    return [json.loads(line) for line in sh(lab, "postqueue -j").splitlines() if line.strip()]


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


def deferred(lab: Lab, wait: float = 60) -> dict[str, Any]:
    """The one recipient waiting in the deferred queue, with its delay_reason."""
    deadline = time.monotonic() + wait
    waiting: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not waiting:
        waiting = [m for m in queued(lab) if m.get("queue_name") == "deferred"]
        time.sleep(0.5)
    (message,) = waiting
    (recipient,) = message["recipients"]
    return dict(recipient)


@pytest.fixture(scope="module")
def relays(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, smarthost.Smarthost]]:
    base = tmp_path_factory.mktemp("smarthost")
    pair = acme.issue(lab.paths, SMARTHOST, base, "smarthost")
    trusted = (pair[1], pair[0])  # (certificate, key)
    hosts: dict[int, smarthost.Smarthost] = {}
    try:
        for port in (*TRUSTED, UNTRUSTED):
            hosts[port] = smarthost.start(
                base / str(port), lab.spec.inet_ipv4, port, LOGIN, PASSWORD, trusted if port in TRUSTED else None
            )
        yield hosts
    finally:
        for host in hosts.values():
            smarthost.stop(host)


@pytest.fixture(scope="module")
def mail(lab: Lab, relays: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        with world(lab, tmp_path_factory.mktemp("relay")) as w:
            yield w
    finally:
        up(lab, None)  # the stack's own state: no relay
        sh(lab, "postsuper -d ALL deferred >/dev/null 2>&1 || true")


@pytest.mark.parametrize("port", TRUSTED)
def test_mail_to_another_domain_leaves_through_the_relay_over_tls_logged_in(
    lab: Lab, mail: World, relays: dict[int, smarthost.Smarthost], port: int
) -> None:
    assert "mail-postfix" in up(lab, port).ran
    tag = subject(f"relay-{port}")
    mail.submit(587, "alice@sams.test", [f"someone@{RECEIVER_DOMAIN}"], tag)
    got = relayed(lab, relays[port], tag)
    head = got.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    assert f"X-Smarthost-Login: {LOGIN}" in head, head
    assert "X-Smarthost-TLS: TLSv1.3" in head or "X-Smarthost-TLS: TLSv1.2" in head, head
    assert f"X-Smarthost-Envelope: alice@sams.test -> someone@{RECEIVER_DOMAIN}" in head, head
    # Signed by OpenDKIM before it left: the relay forwards what the receiver will verify.
    assert "DKIM-Signature:" in head and "d=sams.test" in head, head


def test_a_wrong_relay_password_keeps_the_mail_queued_and_says_why(
    lab: Lab, mail: World, relays: dict[int, smarthost.Smarthost]
) -> None:
    up(lab, 587, password="not-the-password")
    tag = subject("relay-wrong-password")
    mail.submit(587, "alice@sams.test", [f"someone@{RECEIVER_DOMAIN}"], tag)
    recipient = deferred(lab)
    assert "SASL authentication failed" in recipient["delay_reason"], recipient
    assert not [m for m in relays[587].received() if tag.encode() in m]
    # The right password: the waiting mail goes out (Postfix retries within minimal_backoff_time, 5 min;
    # the test flushes the queue instead of waiting).
    up(lab, 587)
    sh(lab, "postqueue -f")
    relayed(lab, relays[587], tag)
    assert queued(lab) == []


def test_a_relay_whose_certificate_does_not_verify_never_gets_the_password(
    lab: Lab, mail: World, relays: dict[int, smarthost.Smarthost]
) -> None:
    """The certificate names smtp.lab.example but no CA the host trusts signed it: Postfix stops after
    the TLS handshake, before AUTH, and keeps the mail."""
    up(lab, UNTRUSTED)
    tag = subject("relay-untrusted")
    mail.submit(587, "alice@sams.test", [f"someone@{RECEIVER_DOMAIN}"], tag)
    recipient = deferred(lab)
    assert "Server certificate not verified" in recipient["delay_reason"], recipient
    assert relays[UNTRUSTED].logins_tried() == [] and relays[UNTRUSTED].received() == []
    sh(lab, "postsuper -d ALL deferred >/dev/null")
