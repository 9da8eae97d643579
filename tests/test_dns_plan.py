"""The DNS plan says what the host does: client SRV records follow the firewall's port policy, and
DMARC reports sent to another domain are authorized there (RFC 7489 section 7.1)."""

from __future__ import annotations

from typing import Any

import pytest

import mockrun
from components.dns.plan import CLIENT_SRV, plan, report_authorizations
from components.dns.records import Record, srv, txt
from components.firewall.policy import port_policy
from tests.test_program import dns_records, settings_of, txt_strings


def records_of(settings: Any) -> tuple[Record, ...]:
    return plan(settings, has_ipv6=False)


def test_client_srv_records_follow_the_port_policy(variant: str) -> None:
    """A public port is advertised with its number; a closed or VPN-only one says "." (not offered)."""
    s = settings_of(variant)
    public = {p.service: p.number for p in port_policy(s.config) if p.exposure == "public"}
    records = records_of(s)
    for domain in s.mail.domains:
        for service, priority, _ in CLIENT_SRV:
            (record,) = [r for r in records if r.name == f"_{service}._tcp.{domain.name}"]
            if service in public:
                assert record.data == srv(priority, 1, public[service], s.config.hostname), record
            else:
                assert record.data == srv(0, 0, 0, "."), record


def test_plain_imap_is_advertised_where_port_143_is_public() -> None:
    """The audit's case: the lab and prod open 143 (STARTTLS), so _imap._tcp must not say "not offered";
    with IMAP VPN-only, neither IMAP service is advertised; POP3 without TLS (110) never is."""
    for variant, offered in (("lab", True), ("prod", True), ("prod-bastion", False)):
        s = settings_of(variant)
        by_name = {r.name: r.data for r in records_of(s)}
        d = s.mail.domains[0].name
        assert (by_name[f"_imap._tcp.{d}"] == srv(10, 1, 143, s.config.hostname)) is offered, variant
        assert (by_name[f"_imaps._tcp.{d}"] == srv(0, 1, 993, s.config.hostname)) is offered, variant
        assert by_name[f"_pop3._tcp.{d}"] == srv(0, 0, 0, "."), variant


def test_dmarc_report_authorization_between_sams_domains(variant: str) -> None:
    """Every domain whose rua is in another SAMS domain gets <domain>._report._dmarc.<rua domain>."""
    s = settings_of(variant)
    ours = {d.name for d in s.mail.domains}
    records, warnings = report_authorizations(s)
    expected = set()
    for d in ours:
        rua = (s.config.dmarc.rua or f"postmaster@{d}").rpartition("@")[2]
        if rua != d and rua in ours:
            expected.add(f"{d}._report._dmarc.{rua}")
    assert {r.name for r in records} == expected
    assert all(r.type == "TXT" and r.data == txt("v=DMARC1") and r.zone in ours for r in records)
    # They reach Cloudflare (and so the lab DNS) like every other record.
    published = {r["name"]: txt_strings(r["content"]) for r in dns_records(mockrun_run(variant)) if r["type"] == "TXT"}
    for name in expected:
        assert published[name] == ["v=DMARC1"], name
    assert not [w for w in warnings if any(f"{name} " in w for name in expected)]


def mockrun_run(variant: str) -> mockrun.Run:
    from tests.conftest import run_variant

    return run_variant(variant)


def test_lab_authorizes_other_test_reports_at_sams_test() -> None:
    records, warnings = report_authorizations(settings_of("lab"))
    assert [(r.zone, r.name) for r in records] == [("sams.test", "other.test._report._dmarc.sams.test")]
    assert warnings == []


@pytest.mark.parametrize("variant", ["prod", "dev"])
def test_rua_outside_sams_domains_is_warned_about(variant: str) -> None:
    """prod sends reports to dmarc-reports@example.org: example.net's need example.org's consent
    (published, both are SAMS domains). dev's rua is in dev.example.org, a domain SAMS does not serve."""
    s = settings_of(variant)
    records, warnings = report_authorizations(s)
    if variant == "prod":
        assert [r.name for r in records] == ["example.net._report._dmarc.example.org"]
        assert warnings == []
    else:
        rua = s.config.dmarc.rua.rpartition("@")[2]
        assert records == [] or all(not r.name.endswith(rua) for r in records)
        for d in s.mail.domains:
            if not (d.name == rua or rua.endswith("." + d.name)):
                assert any(f"{d.name}._report._dmarc.{rua}" in w for w in warnings), warnings


def test_the_warning_is_logged_at_program_run(caplog: pytest.LogCaptureFixture) -> None:
    """Pulumi's log (mocks: Python logging) carries one warning per domain whose reports go outside."""
    overrides = {"sams:dmarc": {"policy": "none", "rua": "reports@elsewhere.example"}}
    mockrun.run("lab", overrides=overrides, secret_config=mockrun.TEST_SECRETS)
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert 'sams.test._report._dmarc.elsewhere.example TXT "v=DMARC1"' in text, text[-2000:]
    assert 'other.test._report._dmarc.elsewhere.example TXT "v=DMARC1"' in text, text[-2000:]


def test_dav_srv_records_only_when_calendars_are_public() -> None:
    """RFC 6764 SRV for CalDAV/CardDAV: the host on 443 with calendars on and webmail public; else "."
    (not offered), like a VPN-only mail port: the lab's default (exposure vpn) advertises nothing."""
    import json
    from pathlib import Path

    from settings import load

    project = Path(__file__).resolve().parents[1]
    cases: tuple[tuple[dict[str, str | bool], bool], ...] = (
        ({}, False),
        ({"exposure": "public"}, True),
        ({"exposure": "public", "calendars": False}, False),
    )
    for webmail, offered in cases:
        cfg = {**mockrun.stack_config("prod"), **mockrun.TEST_SECRETS, "sams:webmail": json.dumps(webmail)}
        s = load("prod", cfg, project)
        by_name = {r.name: r for r in records_of(s)}
        for domain in s.mail.domains:
            for service in ("caldavs", "carddavs"):
                record = by_name[f"_{service}._tcp.{domain.name}"]
                assert record.type == "SRV"
                want = srv(0, 1, 443, s.config.hostname) if offered else srv(0, 0, 0, ".")
                assert record.data == want, (webmail, record)
