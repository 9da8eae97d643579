"""DNS records in one form (components/dns/records.py): every record the plan emits survives
dnspython's presentation format, the wire and Cloudflare's fields unchanged, and the zone files the
lab serves, the Cloudflare inputs and the `dnsRecords` output are the same records."""

from __future__ import annotations

import json
import re
from typing import Any

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

import mockrun
from components.dns import records, zonefile
from components.dns.records import Record, Ref
from lab import dns as labdns
from tests.conftest import VARIANTS, run_variant
from tests.test_zonefile import lab_zones

DNSRECORD = "cloudflare:index/dnsRecord:DnsRecord"


def published(run: mockrun.Run) -> list[Record]:
    """The `dnsRecords` output: the plan, resolved."""
    return [Record.from_json(entry) for entry in run.outputs["dnsRecords"]]


def program_zones(run: mockrun.Run) -> list[str]:
    return [a["filter"]["name"] for t, a in run.invokes if t == labdns.GETZONE]


def assert_round_trips(rdata: dns.rdata.Rdata) -> None:
    kind = dns.rdatatype.to_text(rdata.rdtype)
    text = rdata.to_text()
    again = records.parse(kind, text)  # presentation format, as a zone file or `dig` has it
    assert again == rdata and again.to_text() == text, (kind, text, again.to_text())
    wire = rdata.to_wire()
    assert wire is not None
    assert dns.rdata.from_wire(dns.rdataclass.IN, rdata.rdtype, wire, 0, len(wire)) == rdata, text
    fields = records.cloudflare_fields(rdata)
    assert records.rdata_from_cloudflare({"type": kind, **fields}) == rdata, (text, fields)
    assert records.normal(again) == records.normal(rdata)


def test_every_record_the_plan_emits_round_trips() -> None:
    kinds: set[str] = set()
    for variant in sorted(VARIANTS):
        for record in published(run_variant(variant)):
            assert_round_trips(record.rdata())
            assert Record.from_json(record.to_json()) == record
            kinds.add(record.type)
    # What the plan publishes today (PTR is the provider's, NS Cloudflare's: both below).
    assert kinds == {"A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA"}


@pytest.mark.parametrize(
    "rdata",
    [
        records.a("198.18.0.10"),
        records.aaaa("2001:db8::25"),
        records.cname("mail.sams.test"),
        records.mx(10, "mail.sams.test"),
        records.srv(0, 1, 465, "mail.sams.test"),
        records.srv(0, 0, 0, "."),  # RFC 2782: not offered
        records.caa(0, "issue", "letsencrypt.org"),
        records.caa(0, "issuewild", ";"),
        records.caa(128, "iodef", 'mailto:"ca"\\team@example.org'),  # quotes and a backslash in the value
        records.txt("v=spf1 mx -all"),
        records.txt('say "hi" \\ then ; not a comment'),
        records.txt("v=DKIM1; k=rsa; p=" + "A" * 392),  # a 2048-bit key: two character-strings
        records.txt("é" * 200),  # 400 bytes of UTF-8, split inside a character: joined back whole
        records.txt(""),
        records.ptr("mail.sams.test"),
        records.ns("ns.lab.example"),
    ],
    ids=lambda r: f"{dns.rdatatype.to_text(r.rdtype)}:{r.to_text()[:24]}",
)
def test_each_type_round_trips(rdata: dns.rdata.Rdata) -> None:
    assert_round_trips(rdata)


def test_quoting_is_dnspythons() -> None:
    """TXT and CAA values with quotes, backslashes and long values are escaped and split alike for
    Cloudflare, the zone files, the checklist and the doctor's fixes (all Rdata.to_text())."""
    caa = records.caa(0, "issue", 'ca.example; account="x"')
    assert caa.to_text() == '0 issue "ca.example; account=\\"x\\""'
    assert records.cloudflare_fields(caa) == {"data": {"flags": 0, "tag": "issue", "value": 'ca.example; account="x"'}}
    long = records.txt("x" * 300)
    assert long.to_text() == f'"{"x" * 255}" "{"x" * 45}"'
    assert records.cloudflare_fields(long) == {"content": long.to_text()}
    assert records.txt_value(records.txt('a "b" \\c')) == 'a "b" \\c'
    assert records.txt('a "b" \\c').to_text() == '"a \\"b\\" \\\\c"'
    # Cloudflare reads unquoted TXT content as one value (";" is not a zone-file comment there).
    assert records.txt_value(records.rdata_from_cloudflare({"type": "TXT", "content": "v=DMARC1;p=NONE"})) == (
        "v=DMARC1;p=NONE"
    )
    # Names for Cloudflare have no trailing dot; the root target stays ".".
    assert records.cloudflare_fields(records.mx(10, "mail.sams.test.")) == {"content": "mail.sams.test", "priority": 10}
    assert records.cloudflare_fields(records.srv(0, 0, 0, "."))["data"]["target"] == "."


def test_the_normal_form_ignores_spelling_not_content() -> None:
    """The doctor compares `normal` of the plan with `normal` of the answer: a DNS host may change
    case, split TXT elsewhere or spell IPv6 in full; a different value still differs."""
    same = [
        ("MX", "10 MAIL.Sams.Test.", records.mx(10, "mail.sams.test")),
        ("CAA", '0 ISSUE "letsencrypt.org"', records.caa(0, "issue", "letsencrypt.org")),
        ("TXT", '"v=spf1 " "mx -all"', records.txt("v=spf1 mx -all")),
        ("AAAA", "2001:0db8:0000:0000:0000:0000:0000:0025", records.aaaa("2001:db8::25")),
        ("SRV", "0 1 993 Mail.Sams.Test.", records.srv(0, 1, 993, "mail.sams.test")),
        ("CNAME", "MAIL.sams.test.", records.cname("mail.sams.test")),
    ]
    for kind, text, planned in same:
        assert records.normal(records.parse(kind, text)) == records.normal(planned), (kind, text)
    different = [
        ("MX", "20 mail.sams.test.", records.mx(10, "mail.sams.test")),
        ("CAA", '0 issue "pebble.lab.example"', records.caa(0, "issue", "letsencrypt.org")),
        ("TXT", '"v=spf1 mx ~all"', records.txt("v=spf1 mx -all")),
    ]
    for kind, text, planned in different:
        assert records.normal(records.parse(kind, text)) != records.normal(planned), (kind, text)


def test_a_record_is_consistent_or_refused() -> None:
    with pytest.raises(ValueError, match="data of type MX"):
        Record("sams.test", "sams.test", "TXT", 300, records.mx(10, "mail.sams.test"))
    with pytest.raises(ValueError, match=re.escape("not a lower-case name in zone sams.test")):
        Record("sams.test", "Mail.sams.test", "A", 300, records.a("198.18.0.10"))
    with pytest.raises(ValueError, match=re.escape("not a lower-case name in zone sams.test")):
        Record("sams.test", "mail.other.test", "A", 300, records.a("198.18.0.10"))
    with pytest.raises(ValueError, match="none of"):
        Record("sams.test", "sams.test", "HTTPS", 300, Ref("ipv4"))  # type: ignore[arg-type]
    unresolved = Record("sams.test", "mail.sams.test", "A", 300, Ref("ipv4"))
    with pytest.raises(KeyError, match="ipv4 is not known"):
        unresolved.text()
    assert unresolved.line({"ipv4": "198.18.0.10"}) == "mail.sams.test. 300 IN A 198.18.0.10"
    assert unresolved.line({"ipv4": "198.18.0.10"}, origin="sams.test") == "mail 300 IN A 198.18.0.10"
    with pytest.raises(ValueError, match="not made from one value"):
        records.value_rdata("MX", "mail.sams.test")
    with pytest.raises(dns.exception.SyntaxError):
        records.a("not an address")
    with pytest.raises(ValueError, match="none of the zones"):
        records.zone_of("example.com", ["sams.test"])
    assert records.zone_of("a.sub.sams.test", ["sams.test", "sub.sams.test"]) == "sub.sams.test"


def cloudflare_view(inputs: dict[str, Any]) -> dict[str, Any]:
    """A DnsRecord's inputs without the zone id, numbers as the engine returns them (floats)."""
    out = {k: v for k, v in inputs.items() if k != "zoneId"}
    return json_numbers(out)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def json_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_numbers(v) for k, v in value.items()}
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return float(value)


def test_cloudflare_inputs_the_output_and_the_lab_zones_are_the_same_records(variant: str) -> None:
    """One set of Record objects feeds Cloudflare, the `dnsRecords` output and the lab's zone files:
    each DnsRecord's inputs are exactly cloudflare_record + cloudflare_fields of its output entry,
    and the zone files the lab renders from the DnsRecord inputs equal those from the output."""
    run = run_variant(variant)
    out = published(run)
    declared = [r.inputs for r in run.of_type(DNSRECORD)]
    assert declared and len(declared) == len(out)
    expected = sorted(
        (cloudflare_view({**records.cloudflare_record(r), **records.cloudflare_fields(r.rdata())}) for r in out),
        key=canonical,
    )
    assert sorted((cloudflare_view(i) for i in declared), key=canonical) == expected
    zones = program_zones(run)
    from_cloudflare = zonefile.zone_files(
        [records.from_cloudflare(i, zones) for i in declared], zones, nameservers=["ns"]
    )
    from_output = zonefile.zone_files(out, zones, nameservers=["ns"])
    assert from_cloudflare == from_output
    back = sorted((records.from_cloudflare(i, zones) for i in declared), key=Record.line)
    assert back == sorted(out, key=Record.line)  # zone, TTL, data and purpose alike


def test_the_lab_serves_the_program_zones_from_the_same_records() -> None:
    run = run_variant("lab")
    lab = lab_zones(run)
    own = zonefile.zone_files(published(run), program_zones(run), nameservers=[labdns.NAMESERVER])
    assert own and all(lab[zone] == text for zone, text in own.items())
