"""docs/dns_checklist.md is generated from the DNS plan; it must match the plan and the program."""

from pathlib import Path

import mockrun
from components.dns.checklist import for_stack

PROJECT = Path(__file__).resolve().parents[1]


def test_checklist_is_current() -> None:
    assert (PROJECT / "docs" / "dns_checklist.md").read_text() == for_stack("prod"), (
        "run: python -m components.dns.checklist prod > docs/dns_checklist.md"
    )


def test_checklist_lists_every_record_cloudflare_gets() -> None:
    text = for_stack("prod")
    run = mockrun.run("prod", secret_config=mockrun.TEST_SECRETS)
    records = run.of_type("cloudflare:index/dnsRecord:DnsRecord")
    assert records
    for r in records:
        assert f"| `{r.inputs['name']}` | {r.inputs['type']} |" in text, r.name
    assert text.count("\n| `") == len(records)
    assert "PTR" in text and "mail.example.org" in text
