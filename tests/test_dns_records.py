"""DNS records in one form (components/dns/records.py): every record type survives dnspython's
presentation format, the wire and Cloudflare's fields unchanged."""

from __future__ import annotations

import re

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from components.dns import records
from components.dns.records import Record, Ref


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
