"""The CrossGuard rules (policy/rules.py) over what the real program registers under mocks.

The shipped stacks must pass; copies mutated the way a careless change would (SSH open to the
world, DMARC p=none in prod, a remote step to a public address, backups off in prod) must not.
The pack's own wiring (policy/__main__.py) is exercised with a stand-in PolicyPack: the real
constructor starts a gRPC server and blocks.
"""

from __future__ import annotations

import copy
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi_policy
import pytest

import mockrun
from components.dns.records import rdata_from_cloudflare, txt_value
from policy import rules
from policy.rules import Context, Resource

PROJECT = Path(__file__).resolve().parents[1]
PROD_DMARC_OFF = {"sams:dmarc": {"policy": "none", "rua": "dmarc-reports@example.org"}}


def resources_of(run: mockrun.Run) -> list[Resource]:
    """What the engine hands the pack: each resource's inputs and parent, plus the Stack with its outputs."""
    out = [Resource(c.type, c.urn, copy.deepcopy(c.inputs), c.parent or None) for c in run.resources]
    out.append(Resource(rules.STACK_TYPE, stack_urn(run.stack), run.outputs))
    return out


def stack_urn(stack: str) -> str:
    return f"urn:pulumi:{stack}::sams::{rules.STACK_TYPE}::sams-{stack}"


def context_of(run: mockrun.Run) -> Context:
    return Context.of(rules.stack_of_urn(run.resources[0].urn))


def violations(resources: list[Resource], ctx: Context, policy: str | None = None) -> list[str]:
    report = rules.evaluate(resources, ctx)
    return [v.message for v in report.violations if policy is None or v.policy == policy]


def replace(resources: list[Resource], name_suffix: str, change: Callable[[dict[str, Any]], None]) -> list[Resource]:
    """A copy of the stack with one resource's properties changed."""
    out = []
    hits = 0
    for r in resources:
        if r.urn.endswith("::" + name_suffix):
            props = copy.deepcopy(dict(r.props))
            change(props)
            r = Resource(r.type, r.urn, props, r.parent)
            hits += 1
        out.append(r)
    assert hits == 1, f"expected one resource named {name_suffix}"
    return out


def with_resource(resources: list[Resource], type_: str, name: str, props: dict[str, Any]) -> list[Resource]:
    stack = rules.stack_of_urn(resources[0].urn)
    return [*resources, Resource(type_, f"urn:pulumi:{stack}::sams::{type_}::{name}", props)]


# --- the shipped stacks pass ------------------------------------------------------------------


def test_shipped_stacks_pass(run: mockrun.Run, variant: str) -> None:
    ctx = context_of(run)
    assert ctx.stack == run.stack and ctx.is_prod == (run.stack == "prod")
    assert "backup" in run.outputs
    found = rules.evaluate(resources_of(run), ctx).violations
    assert not found, "\n".join(f"[{v.policy}] {v.urn}: {v.message}" for v in found)


def test_stack_name_comes_from_the_urn() -> None:
    assert rules.stack_of_urn("urn:pulumi:prod::sams::sams:host:Host::host") == "prod"
    with pytest.raises(ValueError):
        rules.stack_of_urn("prod::sams")
    assert Context.of("staging", {"prodStacks": ["staging"]}).is_prod
    assert not Context.of("prod", {"prodStacks": ["production"]}).is_prod


# --- firewalls --------------------------------------------------------------------------------

FIREWALL = "no-private-port-open-to-world"


@pytest.mark.parametrize(
    ("port", "ip_type", "subnet", "expect"),
    [
        ("22", "v4", "0.0.0.0", ["22"]),
        ("22", "v6", "::", ["22"]),
        ("5432", "v4", "0.0.0.0", ["5432"]),
        ("11334", "v6", "::", ["11334"]),
        ("1:65535", "v4", "0.0.0.0", ["22", "5432", "11334"]),
    ],
)
def test_vultr_rule_open_to_the_world_violates(
    runner: Callable[[str], mockrun.Run], port: str, ip_type: str, subnet: str, expect: list[str]
) -> None:
    run = runner("prod")
    rule = {"port": port, "protocol": "tcp", "ipType": ip_type, "subnet": subnet, "subnetSize": 0}
    found = violations(with_resource(resources_of(run), rules.VULTR_RULE, "open", rule), context_of(run), FIREWALL)
    assert len(found) == 1
    assert ("::/0" if ip_type == "v6" else "0.0.0.0/0") in found[0]
    for number in expect:
        assert number in found[0]


def test_vultr_ssh_from_one_address_is_fine(runner: Callable[[str], mockrun.Run]) -> None:
    run = runner("prod")
    rule = {"port": "22", "protocol": "tcp", "ipType": "v4", "subnet": "203.0.113.7", "subnetSize": 32}
    assert not violations(with_resource(resources_of(run), rules.VULTR_RULE, "office", rule), context_of(run), FIREWALL)


def test_shipped_vultr_rule_widened_to_ssh_violates(runner: Callable[[str], mockrun.Run]) -> None:
    run = runner("prod")

    def widen(props: dict[str, Any]) -> None:
        props["port"] = "20:30"

    found = violations(replace(resources_of(run), "host-firewall-tcp-25-v4", widen), context_of(run), FIREWALL)
    assert found and "22" in found[0]


@pytest.mark.parametrize(
    "rule",
    [
        {"protocol": "6", "source": "0.0.0.0/0", "sourceType": "CIDR_BLOCK", "tcpOptions": {"min": 22, "max": 22}},
        {"protocol": "6", "source": "::/0", "sourceType": "CIDR_BLOCK", "tcpOptions": {"min": 5432, "max": 5432}},
        {"protocol": "6", "source": "0.0.0.0/0", "sourceType": "CIDR_BLOCK"},  # no tcpOptions: every port
        {"protocol": "all", "source": "0.0.0.0/0", "sourceType": "CIDR_BLOCK"},
    ],
)
def test_oci_security_list_open_to_the_world_violates(
    runner: Callable[[str], mockrun.Run], rule: dict[str, Any]
) -> None:
    run = runner("dev")

    def add(props: dict[str, Any]) -> None:
        props["ingressSecurityRules"].append(rule)

    found = violations(replace(resources_of(run), "host-firewall-security-list", add), context_of(run), FIREWALL)
    assert len(found) == 1 and rule["source"] in found[0]


def test_oci_ssh_from_the_vcn_is_fine(runner: Callable[[str], mockrun.Run]) -> None:
    run = runner("dev")
    rule = {"protocol": "6", "source": "10.0.0.0/16", "sourceType": "CIDR_BLOCK", "tcpOptions": {"min": 22, "max": 22}}

    def add(props: dict[str, Any]) -> None:
        props["ingressSecurityRules"].append(rule)

    assert not violations(replace(resources_of(run), "host-firewall-security-list", add), context_of(run))


def test_oci_nsg_rule_open_to_the_world_violates() -> None:
    nsg = {
        "direction": "INGRESS",
        "protocol": "6",
        "source": "0.0.0.0/0",
        "sourceType": "CIDR_BLOCK",
        "tcpOptions": {"destinationPortRange": {"min": 22, "max": 22}},
    }
    assert rules.check_firewall(rules.OCI_NSG_RULE, nsg)
    assert not rules.check_firewall(rules.OCI_NSG_RULE, {**nsg, "direction": "EGRESS"})


# --- DMARC ------------------------------------------------------------------------------------

DMARC = "dmarc-enforced-in-prod"


def txt_of(content: str) -> str:
    """A DnsRecord's TXT content as the rule reads it (components/dns/records.py)."""
    return txt_value(rdata_from_cloudflare({"type": "TXT", "content": content}))


def test_dmarc_none_in_prod_violates(runner: Callable[[str], mockrun.Run]) -> None:
    run = runner("prod")

    def relax(props: dict[str, Any]) -> None:
        props["content"] = '"v=DMARC1; p=none; rua=mailto:dmarc-reports@example.org"'

    found = violations(replace(resources_of(run), "dns-txt-_dmarc.example.org", relax), context_of(run), DMARC)
    assert found == [
        "_dmarc.example.org: DMARC p=none in production stack 'prod'; set sams:dmarc.policy to quarantine or reject"
    ]


def test_dmarc_none_outside_prod_is_allowed(runner: Callable[[str], mockrun.Run]) -> None:
    run = runner("dev")
    assert {
        rules.dmarc_policy(txt_of(r.inputs["content"]))
        for r in run.resources
        if r.type == rules.DNS_RECORD and r.inputs["name"].startswith("_dmarc.")
    } == {"none"}
    assert not violations(resources_of(run), context_of(run), DMARC)


def test_prod_program_with_dmarc_none_violates() -> None:
    run = mockrun.run("prod", secret_config=mockrun.TEST_SECRETS, overrides=PROD_DMARC_OFF)
    found = violations(resources_of(run), context_of(run), DMARC) + violations(
        resources_of(run), context_of(run), DMARC + "-table"
    )
    # One per domain's record, and the same again from the dnsRecords table.
    assert sorted(found) == sorted(
        f"_dmarc.{d}: DMARC p=none in production stack 'prod'; set sams:dmarc.policy to quarantine or reject"
        for d in ("example.org", "example.net")
        for _ in range(2)
    )


def test_manual_dns_dmarc_none_in_prod_is_caught_from_the_table() -> None:
    run = mockrun.run(
        "prod", secret_config=mockrun.TEST_SECRETS, overrides={**PROD_DMARC_OFF, "sams:dns": {"provider": "manual"}}
    )
    assert not run.of_type(rules.DNS_RECORD)
    found = violations(resources_of(run), context_of(run), "dmarc-enforced-in-prod-table")
    assert len(found) == 2 and all("p=none" in m for m in found)


def test_the_table_rule_reads_dmarc_by_field_even_in_a_preview() -> None:
    """Entries are structured (components/dns/records.py): the rule picks _dmarc TXT by field. In a
    preview, through the policy SDK's own proxy, records whose value comes with the update (the
    address, the DKIM keys) are unknown: skipped, not a reason to give up on DMARC."""
    from pulumi_policy.proxy import UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE, unknown_checking_proxy

    prod = Context.of("prod")
    dmarc = {"zone": "example.org", "name": "_dmarc.example.org", "type": "TXT", "ttl": 300, "purpose": ""}
    dkim = {**dmarc, "name": "s1._domainkey.example.org", "data": UNKNOWN_STRING_VALUE}
    none = "_dmarc.example.org: DMARC p=none in production stack 'prod'; set sams:dmarc.policy to quarantine or reject"
    for policy, found in (("none", [none]), ("reject", [])):
        entries = [UNKNOWN_OBJECT_VALUE, dkim, {**dmarc, "data": f'"v=DMARC1; " "p={policy}"'}]
        assert rules.check_dmarc_table(unknown_checking_proxy({"dnsRecords": entries}), prod) == found
    assert rules.check_dmarc_table(unknown_checking_proxy({"dnsRecords": UNKNOWN_OBJECT_VALUE}), prod) == []


def test_the_table_rule_names_what_it_cannot_read() -> None:
    prod = Context.of("prod")
    dmarc = {"zone": "example.org", "name": "_dmarc.example.org", "type": "TXT", "ttl": 300, "purpose": ""}
    (broken,) = rules.check_dmarc_table({"dnsRecords": [{**dmarc, "data": '"v=DMARC1; p=reject'}]}, prod)
    assert broken.startswith("dnsRecords: not a record") and "_dmarc.example.org" in broken
    unparsable = {"type": "TXT", "name": "_dmarc.example.org", "content": '"v=DMARC1; p=reject'}
    (message,) = rules.check_dmarc(rules.DNS_RECORD, unparsable, prod)
    assert "not DNS presentation format" in message


@pytest.mark.parametrize(
    ("content", "policy"),
    [
        ('"v=DMARC1; p=reject"', "reject"),
        ('"v=DMARC1; " "p=quarantine; pct=50"', "quarantine"),
        ("v=DMARC1;p=NONE", "none"),
        ('"v=DMARC1; rua=mailto:a@b"', None),
    ],
)
def test_dmarc_parsing(content: str, policy: str | None) -> None:
    assert rules.dmarc_policy(txt_of(content)) == policy


# --- remote steps -----------------------------------------------------------------------------

REMOTE = "remote-steps-over-vpn"


@pytest.mark.parametrize("host", [mockrun.MOCK_IPV4, "mail.example.org", "10.200.0.2"])
@pytest.mark.parametrize("step", ["host-ready-apply", "host-ready-copy"])
def test_remote_step_off_the_vpn_violates(runner: Callable[[str], mockrun.Run], host: str, step: str) -> None:
    run = runner("prod")

    def redirect(props: dict[str, Any]) -> None:
        props["connection"]["host"] = host

    found = violations(replace(resources_of(run), step, redirect), context_of(run), REMOTE)
    assert len(found) == 1 and host in found[0]


def test_remote_steps_through_a_bastion_still_target_the_vpn(runner: Callable[[str], mockrun.Run]) -> None:
    run = runner("prod-bastion")
    proxied = [r for r in run.resources if r.type in rules.REMOTE_TYPES and r.inputs["connection"].get("proxy")]
    assert proxied
    assert not violations(resources_of(run), context_of(run), REMOTE)


def test_vpn_networks_come_from_policy_config(runner: Callable[[str], mockrun.Run]) -> None:
    run = runner("prod")
    ctx = Context.of("prod", {"vpnNetworks": ["10.9.0.0/24"]})
    assert len(violations(resources_of(run), ctx, REMOTE)) == len(run.of_type("command:remote:Command")) + len(
        run.of_type("command:remote:CopyToRemote")
    )


# --- backups ----------------------------------------------------------------------------------

BACKUPS = "backups-enabled-in-prod"


REST = "rest:https://backup.example.org:8000/sams-prod/"
PROGRAM_BUCKET = {"sams:backup": {"enabled": True}}  # prod is Vultr: the program creates the storage


def with_outputs(resources: list[Resource], backup: Any) -> list[Resource]:
    """The same stack with another `backup` stack output (None: none at all)."""
    stack = next(r for r in resources if r.type == rules.STACK_TYPE)
    outputs = {k: v for k, v in stack.props.items() if k != "backup"}
    if backup is not None:
        outputs["backup"] = backup
    return [r for r in resources if r is not stack] + [Resource(rules.STACK_TYPE, stack.urn, outputs)]


def named(name: str) -> Callable[[Resource], bool]:
    return lambda r: r.urn.endswith("::" + name)


def without(resources: list[Resource], drop: Callable[[Resource], bool]) -> list[Resource]:
    gone = [r for r in resources if drop(r)]
    assert gone, "the mutation must remove something"
    return [r for r in resources if not drop(r)]


@pytest.mark.parametrize(
    ("backup", "says"),
    [
        ({"enabled": False, "repository": REST}, "backups are off in production stack 'prod'"),
        ({"enabled": True, "repository": None}, "have no repository: set sams:backup.repository"),
        ({"enabled": True, "repository": ""}, "have no repository"),
        ({"enabled": True}, "have no repository"),
        (None, "exports no `backup` output"),
    ],
)
def test_backup_output_off_or_without_repository_in_prod_violates(
    runner: Callable[[str], mockrun.Run], backup: Any, says: str
) -> None:
    run = runner("prod")
    resources = with_outputs(resources_of(run), backup)
    found = violations(resources, context_of(run), BACKUPS)
    assert len(found) == 1 and says in found[0], found
    # Outside production the same stack is fine.
    assert not rules.backup_problems(resources, None, Context.of("dev"))


def test_prod_program_with_backups_off_violates() -> None:
    run = mockrun.run("prod", secret_config=mockrun.TEST_SECRETS, overrides={"sams:backup": {"enabled": False}})
    found = violations(resources_of(run), context_of(run), BACKUPS)
    # The output says off, and the step the host gets is the one that stops the timer (no secrets).
    assert len(found) == 2
    assert "backups are off" in found[1] and "it is the backups-off step" in found[0]


def test_an_output_that_says_enabled_is_not_enough(runner: Callable[[str], mockrun.Run]) -> None:
    """The rule reads the resources, not only the config echo in the `backup` output."""
    run = runner("prod")
    resources = resources_of(run)
    assert run.outputs["backup"]["enabled"] is True and run.outputs["backup"]["repository"] == REST

    no_component = without(resources, lambda r: r.type == rules.BACKUP_TYPE or "backup-" in r.urn.rsplit("::", 1)[1])
    assert violations(no_component, context_of(run), BACKUPS) == [
        "production stack 'prod' has no sams:backup:Backup component, so nothing sets up backups on the host"
    ]
    for step in ("backup-backup-apply", "backup-backup-copy"):
        no_step = without(resources, named(step))
        (found,) = violations(no_step, context_of(run), BACKUPS)
        assert "has no remote step (backup-backup-copy and backup-backup-apply)" in found

    def no_stdin(props: dict[str, Any]) -> None:
        del props["stdin"]

    (found,) = violations(replace(resources, "backup-backup-apply", no_stdin), context_of(run), BACKUPS)
    assert "carries no password or repository on stdin" in found


def test_a_step_elsewhere_does_not_count(runner: Callable[[str], mockrun.Run]) -> None:
    """Another component's step with stdin is not the backup step: the rule follows parents."""
    run = runner("prod")
    resources = resources_of(run)
    step = next(r for r in resources if r.urn.endswith("::backup-backup"))
    orphaned = [Resource(r.type, r.urn, r.props, None) if r is step else r for r in resources]
    (found,) = violations(orphaned, context_of(run), BACKUPS)
    assert "has no remote step" in found


def test_a_program_created_bucket_passes_even_before_its_url_is_known() -> None:
    run = mockrun.run("prod", secret_config=mockrun.TEST_SECRETS, overrides=PROGRAM_BUCKET)
    resources = resources_of(run)
    assert run.outputs["backup"]["repository"].startswith("s3:https://")
    assert not violations(resources, context_of(run), BACKUPS)
    # A preview: the bucket's URL is not known yet; the storage under the Backup component stands for it.
    preview = with_outputs(resources, {**run.outputs["backup"], "repository": None})
    assert not violations(preview, context_of(run), BACKUPS)
    no_storage = without(preview, lambda r: r.type in rules.STORAGE_TYPES)
    (found,) = violations(no_storage, context_of(run), BACKUPS)
    assert "have no repository" in found


def _policy_resources(resources: list[Resource], unknown: set[tuple[str, str]]) -> list[Any]:
    """The resources as the analyzer builds them in a preview: props behind pulumi-policy's unknown-checking
    proxy, parents linked, and the (urn suffix, key) pairs in `unknown` replaced by its unknown sentinel."""
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

    made: dict[str, Any] = {}
    for r in resources:
        props = copy.deepcopy(dict(r.props))
        for suffix, key in unknown:
            if r.urn.endswith("::" + suffix):
                if key == "backup.repository":
                    props["backup"] = {**props["backup"], "repository": UNKNOWN_STRING_VALUE}
                else:
                    props[key] = UNKNOWN_STRING_VALUE
        name = r.urn.rsplit("::", 1)[-1]
        unused: Any = None  # options and provider: the rules read neither
        made[r.urn] = pulumi_policy.PolicyResource(
            r.type, unknown_checking_proxy(props), r.urn, name, unused, unused, None, [], {}
        )
    for r in resources:
        made[r.urn].parent = made.get(r.parent or "")
    return list(made.values())


def test_the_pack_checks_a_preview_with_unknown_values(
    monkeypatch: pytest.MonkeyPatch, runner: Callable[[str], mockrun.Run]
) -> None:
    """Through the pack's own wiring: unknown repository and stdin (a preview of a program-created bucket)
    pass while the storage is there, and an unknown repository without it does not."""
    monkeypatch.setattr(pulumi_policy, "PolicyPack", _Pack)
    _Pack.made.clear()
    runpy.run_path(str(PROJECT / "policy" / "__main__.py"), run_name="__main__")
    (policy,) = [p for p in _Pack.made[0].policies if p.name == BACKUPS]
    run = mockrun.run("prod", secret_config=mockrun.TEST_SECRETS, overrides=PROGRAM_BUCKET)
    unknown = {(f"sams-{run.stack}", "backup.repository"), ("backup-backup-apply", "stdin")}

    def report(resources: list[Resource]) -> list[str]:
        reported: list[str] = []
        args = pulumi_policy.StackValidationArgs(_policy_resources(resources, unknown), {})
        policy.validate(args, lambda m, u=None: reported.append(m))
        return reported

    assert report(resources_of(run)) == []
    found = report(without(resources_of(run), lambda r: r.type in rules.STORAGE_TYPES))
    assert len(found) == 1 and "have no repository" in found[0]
    # And the parents the pack links are what finds the step: the mock engine's URNs name only the parent's type.
    assert rules.BACKUP_TYPE not in rules.type_chain(
        next(r.urn for r in run.resources if r.name == "backup-backup-apply")
    )


# --- the pack's wiring ------------------------------------------------------------------------


class _Pack:
    made: list[_Pack] = []  # noqa: RUF012

    def __init__(self, name: str, enforcement_level: Any, policies: list[Any], **_: Any) -> None:
        self.name, self.enforcement_level, self.policies = name, enforcement_level, policies
        _Pack.made.append(self)


def test_policy_pack_wraps_every_rule(monkeypatch: pytest.MonkeyPatch, runner: Callable[[str], mockrun.Run]) -> None:
    monkeypatch.setattr(pulumi_policy, "PolicyPack", _Pack)
    _Pack.made.clear()
    runpy.run_path(str(PROJECT / "policy" / "__main__.py"), run_name="__main__")
    (pack,) = _Pack.made
    assert pack.name == "sams" and pack.enforcement_level == pulumi_policy.EnforcementLevel.MANDATORY
    names = {p.name for p in pack.policies}
    assert names == {r.name for r in rules.RESOURCE_RULES} | {r.name for r in rules.STACK_RULES}
    by_name = {p.name: p for p in pack.policies}

    # A resource policy, fed a violating resource the way the analyzer would.
    reported: list[tuple[str, str | None]] = []
    open_ssh = {"port": "22", "protocol": "tcp", "ipType": "v4", "subnet": "0.0.0.0", "subnetSize": 0}
    args = pulumi_policy.ResourceValidationArgs(
        rules.VULTR_RULE,
        open_ssh,
        "urn:pulumi:prod::sams::vultr:index/firewallRule:FirewallRule::x",
        "x",
        None,  # type: ignore[arg-type]  # options and provider: unused by the rules
        None,
    )
    by_name[FIREWALL].validate(args, lambda m, u=None: reported.append((m, u)))
    assert len(reported) == 1 and "22" in reported[0][0]

    # A stack policy over the real prod stack with backups switched off.
    run = runner("prod")
    reported.clear()
    stack = _policy_resources(with_outputs(resources_of(run), {"enabled": False, "repository": REST}), set())
    by_name[BACKUPS].validate(pulumi_policy.StackValidationArgs(stack, {}), lambda m, u=None: reported.append((m, u)))
    assert [m for m, _ in reported] == ["backups are off in production stack 'prod': set sams:backup.enabled to true"]
    assert reported[0][1] is not None and reported[0][1].endswith("pulumi:pulumi:Stack::sams-prod")
