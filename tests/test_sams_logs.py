"""sams-logs's queries over lines as Postfix 3.10 and Dovecot 2.4 write them (the lab test runs the
installed tool over a real journal: lab/tests/test_logs_lab.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from components.mail.services import DOVECOT_UNIT, POSTFIX_UNITS, logs_tool

SOURCE = Path(__file__).resolve().parents[1] / "components/mail/usr/local/sbin/sams-logs.py"


def load(tmp_path: Path) -> ModuleType:
    """The tool as the step installs it (its units written in)."""
    path = tmp_path / "sams_logs.py"
    path.write_text(logs_tool())
    spec = importlib.util.spec_from_file_location("sams_logs", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LINES = [
    ("dovecot", "imap-login: Login aborted: Logged out (auth failed, 2 attempts in 4 secs): user=<alice@sams.test>, "
                "method=PLAIN, rip=198.51.100.7, lip=198.18.0.10, TLS, session=<abc>"),
    ("dovecot", "pop3-login: Login aborted: Logged out (auth failed, 1 attempts in 2 secs): user=<bob@sams.test>, "
                "method=PLAIN, rip=198.51.100.8, lip=198.18.0.10, TLS, session=<abd>"),
    ("dovecot", "imap-login: Login: user=<alice@sams.test>, method=PLAIN, rip=198.51.100.9, lip=198.18.0.10, TLS"),
    ("postfix/submission/smtpd", "warning: unknown[198.51.100.7]: SASL PLAIN authentication failed: "
                                 "(reason unavailable), sasl_username=alice@sams.test"),
    ("postfix/submission/smtpd", "warning: unknown[198.51.100.4]: SASL PLAIN authentication failed: Connection lost "
                                 "to authentication server, sasl_username=(unavailable)"),
    ("postfix/smtpd", "NOQUEUE: reject: RCPT from mx.sender.example[198.18.0.1]: 550 5.1.1 <nobody@sams.test>: "
                      "Recipient address rejected: User unknown in virtual mailbox table; from=<a@sender.example> "
                      "to=<nobody@sams.test> proto=ESMTP helo=<mx.sender.example>"),
    ("postfix/smtpd", "NOQUEUE: reject: RCPT from mx.sender.example[198.18.0.1]: 550 5.1.1 <ghost@sams.test>: "
                      "Recipient address rejected: User unknown in virtual mailbox table; from=<a@sender.example> "
                      "to=<ghost@sams.test> proto=ESMTP helo=<mx.sender.example>"),
    ("postfix/cleanup", "4F2A1: milter-reject: END-OF-MESSAGE from unknown[198.18.0.5]: 5.7.1 Spam message rejected; "
                        "from=<a@sender.example> to=<bob@sams.test> proto=ESMTP helo=<x>"),
    ("postfix/smtp", "4F2A2: to=<x@receiver.example>, relay=mx.receiver.example[198.18.0.20]:25, delay=0.3, "
                     "delays=0.1/0/0.1/0.1, dsn=2.0.0, status=sent (250 2.0.0 OK queued as 1)"),
    ("postfix/smtp", "4F2A3: to=<y@Receiver.example>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, "
                     "status=deferred (connect to mx.receiver.example[198.18.0.20]:25: Connection refused)"),
    ("postfix/lmtp", "4F2A4: to=<bob@sams.test>, relay=sams-lmtp, delay=0.1, dsn=2.0.0, status=sent (250 2.0.0 Saved)"),
    ("postfix/submission/smtpd", "4F2A5: client=unknown[198.18.0.5], sasl_method=PLAIN, sasl_username=alice@sams.test"),
    ("postfix/submissions/smtpd", "4F2A6: client=unknown[198.18.0.5], sasl_method=LOGIN, "
                                  "sasl_username=alice@sams.test"),
    ("postfix/submission/smtpd", "4F2A7: client=unknown[198.18.0.6], sasl_method=PLAIN, sasl_username=bob@sams.test"),
]  # fmt: skip


def test_the_installed_tool_reads_the_units_of_postfix_and_dovecot(tmp_path: Path) -> None:
    assert (*POSTFIX_UNITS, DOVECOT_UNIT) == load(tmp_path).UNITS


def test_auth_failures_count_attempts_not_outages(tmp_path: Path) -> None:
    logs = load(tmp_path)
    assert dict(logs.auth_failures(iter(LINES))) == {
        ("imap", "198.51.100.7", "alice@sams.test"): 2,
        ("pop3", "198.51.100.8", "bob@sams.test"): 1,
        ("smtp-auth", "198.51.100.7", "alice@sams.test"): 1,
    }


def test_rejects_by_reason_without_the_addresses(tmp_path: Path) -> None:
    logs = load(tmp_path)
    assert dict(logs.rejects(iter(LINES))) == {
        ("550 5.1.1 Recipient address rejected: User unknown in virtual mailbox table",): 2,
        ("5.7.1 Spam message rejected",): 1,
    }


def test_deliveries_by_domain_and_status(tmp_path: Path) -> None:
    logs = load(tmp_path)
    assert dict(logs.deliveries(iter(LINES))) == {
        ("receiver.example", "sent"): 1,
        ("receiver.example", "deferred"): 1,
        ("sams.test", "sent"): 1,
    }


def test_senders_by_login(tmp_path: Path) -> None:
    logs = load(tmp_path)
    assert dict(logs.senders(iter(LINES))) == {("alice@sams.test",): 2, ("bob@sams.test",): 1}


def test_since_takes_a_duration_or_journalctls_own_forms(tmp_path: Path) -> None:
    logs = load(tmp_path)
    assert [logs.since_arg(s) for s in ("90m", "2d", "today", "2026-12-07 08:00")] == [
        "-90m", "-2d", "today", "2026-12-07 08:00",
    ]  # fmt: skip
