"""The guard rails every `pulumi preview` / `pulumi up` of SAMS is checked against, as plain functions.

Each rule is a function over one resource's type and properties (or, for stack rules, over all
resources). `policy/__main__.py` wraps them in CrossGuard's ResourceValidationPolicy and
StackValidationPolicy; tests call them directly with the resources a mocks run registered.
Properties may be pulumi-policy's read-only proxies, so values are tested against `Mapping` and
`Sequence`, never `dict` and `list`.

What a rule needs to know about the stack comes in a `Context`:
- the stack's name, read from the resource's URN (`urn:pulumi:<stack>::<project>::...`), so the
  rules need neither the CLI's environment nor a config file;
- which stacks are production (policy config `prodStacks`, default `["prod"]`);
- the WireGuard networks remote steps may connect to (policy config `vpnNetworks`, default the
  settings' default network).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

from dns.exception import DNSException

from components.dns.records import Record, rdata_from_cloudflare, txt_value
from components.firewall.policy import NEVER_PUBLIC
from settings.stack import WireGuardSettings

STACK_TYPE = "pulumi:pulumi:Stack"
VULTR_RULE = "vultr:index/firewallRule:FirewallRule"
OCI_SECURITY_LIST = "oci:Core/securityList:SecurityList"
OCI_NSG_RULE = "oci:Core/networkSecurityGroupSecurityRule:NetworkSecurityGroupSecurityRule"
DNS_RECORD = "cloudflare:index/dnsRecord:DnsRecord"
REMOTE_TYPES = frozenset({"command:remote:Command", "command:remote:CopyToRemote"})
BACKUP_TYPE = "sams:backup:Backup"
# What components/backup/storage.py creates when sams:backup.repository is unset.
STORAGE_TYPES = frozenset({"oci:ObjectStorage/bucket:Bucket", "vultr:index/objectStorage:ObjectStorage"})

DEFAULT_PROD_STACKS: tuple[str, ...] = ("prod",)
DEFAULT_VPN_NETWORKS: tuple[str, ...] = (str(WireGuardSettings.model_fields["network"].default),)

# The whole internet, as each cloud spells it.
WORLD_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
OCI_PROTOCOLS = {"6": "tcp", "17": "udp", "all": "all"}
ALL_PORTS = (1, 65535)

Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Context:
    stack: str
    prod_stacks: frozenset[str] = frozenset(DEFAULT_PROD_STACKS)
    vpn_networks: tuple[Network, ...] = tuple(ip_network(n) for n in DEFAULT_VPN_NETWORKS)

    @property
    def is_prod(self) -> bool:
        return self.stack in self.prod_stacks

    @classmethod
    def of(cls, stack: str, config: Mapping[str, Any] | None = None) -> Context:
        """From the stack name and the policy's config (`prodStacks`, `vpnNetworks`)."""
        config = config or {}
        prod = config.get("prodStacks") or DEFAULT_PROD_STACKS
        networks = config.get("vpnNetworks") or DEFAULT_VPN_NETWORKS
        return cls(stack, frozenset(str(s) for s in prod), tuple(ip_network(str(n)) for n in networks))


def stack_of_urn(urn: str) -> str:
    """'urn:pulumi:prod::sams::type::name' -> 'prod'."""
    if not urn.startswith("urn:pulumi:") or "::" not in urn:
        raise ValueError(f"not a Pulumi URN: {urn!r}")
    return urn.removeprefix("urn:pulumi:").split("::", 1)[0]


@dataclass(frozen=True)
class Resource:
    """What a stack rule sees of one resource (built from a PolicyResource or a mockrun.Captured)."""

    type: str
    urn: str
    props: Mapping[str, Any]
    parent: str | None = None  # the parent's URN (the mock engine's URNs name only the parent's own type)


# --- firewalls: nothing that must stay private is open to the world -----------------------------


def _port_range(spec: Any) -> tuple[int, int]:
    """Vultr's `port`: '25', '1000:2000', or empty for every port."""
    text = str(spec if spec is not None else "").strip()
    if not text:
        return ALL_PORTS
    low, _, high = text.partition(":")
    return int(float(low)), int(float(high or low))


def _private_in(low: int, high: int) -> list[int]:
    return sorted(p for p in NEVER_PUBLIC if low <= p <= high)


def _describe(ports: list[int], proto: str, source: str) -> str:
    shown = ", ".join(map(str, ports))
    return f"{proto} port(s) {shown} open to {source}: SSH, PostgreSQL and admin ports are VPN-only"


def check_firewall(type_: str, props: Mapping[str, Any]) -> list[str]:
    """No port in NEVER_PUBLIC (SSH, PostgreSQL, admin UIs) reachable from 0.0.0.0/0 or ::/0."""
    if type_ == VULTR_RULE:
        return _vultr_rule(props)
    if type_ == OCI_SECURITY_LIST:
        found: list[str] = []
        for rule in props.get("ingressSecurityRules") or ():
            found += _oci_rule(rule, rule.get("tcpOptions"), rule.get("udpOptions"), _min_max)
        return found
    if type_ == OCI_NSG_RULE:
        if str(props.get("direction", "")).upper() != "INGRESS":
            return []
        return _oci_rule(props, props.get("tcpOptions"), props.get("udpOptions"), _destination_range)
    return []


def _vultr_rule(props: Mapping[str, Any]) -> list[str]:
    proto = str(props.get("protocol", "")).lower()
    if proto not in ("tcp", "udp"):
        return []  # icmp, gre, esp, ah: no ports
    if int(float(props.get("subnetSize", 0) or 0)) != 0:
        return []
    source = "::/0" if str(props.get("ipType", "v4")) == "v6" else "0.0.0.0/0"
    ports = _private_in(*_port_range(props.get("port")))
    return [_describe(ports, proto, source)] if ports else []


def _min_max(options: Mapping[str, Any] | None) -> tuple[int, int]:
    if not options or options.get("min") is None:
        return ALL_PORTS
    return int(float(options["min"])), int(float(options.get("max", options["min"])))


def _destination_range(options: Mapping[str, Any] | None) -> tuple[int, int]:
    return _min_max((options or {}).get("destinationPortRange"))


def _oci_rule(
    rule: Mapping[str, Any],
    tcp: Mapping[str, Any] | None,
    udp: Mapping[str, Any] | None,
    port_range: Callable[[Mapping[str, Any] | None], tuple[int, int]],
) -> list[str]:
    source = str(rule.get("source", ""))
    if source not in WORLD_CIDRS or str(rule.get("sourceType", "CIDR_BLOCK")) != "CIDR_BLOCK":
        return []
    proto = OCI_PROTOCOLS.get(str(rule.get("protocol", "")))
    if proto is None:
        return []  # ICMP and others: no ports
    low, high = ALL_PORTS if proto == "all" else port_range(tcp if proto == "tcp" else udp)
    ports = _private_in(low, high)
    return [_describe(ports, proto, source)] if ports else []


# --- DMARC: production enforces --------------------------------------------------------------


def dmarc_policy(value: str) -> str | None:
    """The p= tag of a DMARC record, lowercased; None if it has none."""
    for tag in value.split(";"):
        key, _, val = tag.strip().partition("=")
        if key.strip().lower() == "p":
            return val.strip().lower()
    return None


def _dmarc_problem(name: str, value: str, ctx: Context) -> str | None:
    """`value`: the TXT record's value (its character-strings joined)."""
    if not ctx.is_prod:
        return None
    policy = dmarc_policy(value)
    if policy in ("quarantine", "reject"):
        return None
    shown = "p=" + policy if policy is not None else "no p= tag"
    return f"{name}: DMARC {shown} in production stack {ctx.stack!r}; set sams:dmarc.policy to quarantine or reject"


def check_dmarc(type_: str, props: Mapping[str, Any], ctx: Context) -> list[str]:
    """In production, every `_dmarc.<domain>` TXT record says p=quarantine or p=reject."""
    if type_ != DNS_RECORD or str(props.get("type", "")).upper() != "TXT":
        return []
    name = str(props.get("name", ""))
    if not name.startswith("_dmarc."):
        return []
    try:
        value = txt_value(rdata_from_cloudflare({"type": "TXT", "content": str(props.get("content", ""))}))
    except (ValueError, DNSException) as exc:
        return [f"{name}: the TXT content is not DNS presentation format ({exc})"] if ctx.is_prod else []
    problem = _dmarc_problem(name, value, ctx)
    return [problem] if problem else []


def check_dmarc_table(stack_outputs: Mapping[str, Any], ctx: Context) -> list[str]:
    """The same rule over the `dnsRecords` output (components.dns.records.Record.to_json per record),
    which is all there is with sams:dns.provider=manual."""
    entries = _known(stack_outputs, "dnsRecords")
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        return []  # no DNS records (or all unknown in a preview)
    found = []
    for i in range(len(entries)):
        # Only DMARC entries are read. In a preview a record whose value comes with the update (an
        # address, a DKIM key) is unknown: skipped, so DMARC is checked before the first `up` too.
        entry = _known(entries, i)
        if not isinstance(entry, Mapping) or _known(entry, "type") != "TXT":
            continue
        if not str(_known(entry, "name")).startswith("_dmarc."):
            continue
        try:
            record = Record.from_json(entry)
        except ValueError as exc:
            found.append(str(exc))
            continue
        problem = _dmarc_problem(record.name, txt_value(record.rdata()), ctx)
        if problem:
            found.append(problem)
    return found


# --- remote steps: only over the VPN ---------------------------------------------------------


def check_remote_host(type_: str, props: Mapping[str, Any], ctx: Context) -> list[str]:
    """pulumi-command's remote resources connect to a literal address inside the WireGuard network."""
    if type_ not in REMOTE_TYPES:
        return []
    connection = props.get("connection")
    host = connection.get("host") if isinstance(connection, Mapping) else None
    if not host:
        return ["remote step has no connection host"]
    try:
        address = ip_address(str(host))
    except ValueError:
        return [f"remote step connects to the name {host!r}: use the host's WireGuard address, not a public name"]
    if not any(address in net for net in ctx.vpn_networks):
        nets = ", ".join(map(str, ctx.vpn_networks))
        return [f"remote step connects to {address}, outside the VPN ({nets}): SSH is reachable only over WireGuard"]
    return []


# --- backups: on in production ----------------------------------------------------------------

UNKNOWN = object()  # a value the engine does not know yet (a preview): pulumi-policy's proxy raises on it


def _known(props: Mapping[str, Any] | Sequence[Any], key: Any) -> Any:
    """props.get(key) (a list: props[key]), or UNKNOWN where the policy SDK says the value is
    computed during the update."""
    from pulumi_policy.proxy import UnknownValueError  # here: the rest of the rules need no policy SDK

    try:
        return props.get(key) if isinstance(props, Mapping) else props[key]
    except UnknownValueError:
        return UNKNOWN


def type_chain(urn: str) -> tuple[str, ...]:
    """'urn:pulumi:s::p::a:b:C$d:e:F::name' -> ('a:b:C', 'd:e:F'): the types of the ancestors, then its own."""
    return tuple(urn.split("::", 3)[2].split("$"))


def under(resources: Sequence[Resource], ancestor_type: str) -> list[Resource]:
    """The resources with an ancestor of `ancestor_type`, by their parents or, lacking those, their URNs."""
    by_urn = {r.urn: r for r in resources}

    def inside(r: Resource) -> bool:
        if ancestor_type in type_chain(r.urn)[:-1]:
            return True
        seen: set[str] = set()
        parent = r.parent
        while parent and parent not in seen and parent in by_urn:
            seen.add(parent)
            if by_urn[parent].type == ancestor_type:
                return True
            parent = by_urn[parent].parent
        return False

    return [r for r in resources if inside(r)]


def backup_problems(resources: Sequence[Resource], stack_outputs: Mapping[str, Any] | None, ctx: Context) -> list[str]:
    """In production the backups are real, not a config echo: a `sams:backup:Backup` component whose
    remote step (CopyToRemote + Command, `backup-backup-copy`/`-apply`) exists and carries its
    secrets on stdin (the password and the repository: the backups-off step has no stdin), and a
    `backup` stack output that says enabled, with a repository. In a preview the repository of a
    bucket the program creates is not known yet (unknown, or None): a storage resource under the
    Backup component then stands for it."""
    if not ctx.is_prod:
        return []
    where = f"production stack {ctx.stack!r}"
    if not any(r.type == BACKUP_TYPE for r in resources):
        return [f"{where} has no {BACKUP_TYPE} component, so nothing sets up backups on the host"]
    children = under(resources, BACKUP_TYPE)
    commands = [r for r in children if r.type == "command:remote:Command"]
    problems = []
    if not commands or not any(r.type == "command:remote:CopyToRemote" for r in children):
        problems.append(
            f"the {BACKUP_TYPE} component of {where} has no remote step (backup-backup-copy and "
            "backup-backup-apply): the host is never set up to take backups"
        )
    elif not any(_known(r.props, "stdin") for r in commands):  # UNKNOWN counts: it is set during the update
        problems.append(
            f"the backup step of {where} carries no password or repository on stdin: it is the backups-off step"
        )
    backup = _known(stack_outputs or {}, "backup")
    if backup is UNKNOWN:
        return problems  # computed as a whole: the component and its step are what a preview can check
    if not isinstance(backup, Mapping):
        return [
            *problems,
            f"{where} exports no `backup` output, so backups cannot be verified "
            "(the program exports sams:backup as the `backup` stack output)",
        ]
    if _known(backup, "enabled") is not True:
        return [*problems, f"backups are off in {where}: set sams:backup.enabled to true"]
    repository = _known(backup, "repository")
    pending = repository is UNKNOWN or repository is None
    if (pending and not any(r.type in STORAGE_TYPES for r in children)) or (not pending and not repository):
        problems.append(
            f"backups in {where} have no repository: set sams:backup.repository "
            "(or, with provider oci or vultr, leave it unset and the program creates a bucket)"
        )
    return problems


# --- the rule set, as the pack registers it and tests run it ---------------------------------

ResourceCheck = Callable[[str, Mapping[str, Any], Context], list[str]]
StackCheck = Callable[[Sequence[Resource], Context], list[tuple[str, str | None]]]


@dataclass(frozen=True)
class ResourceRule:
    name: str
    description: str
    check: ResourceCheck


@dataclass(frozen=True)
class StackRule:
    name: str
    description: str
    check: StackCheck


def stack_outputs(resources: Iterable[Resource]) -> tuple[str | None, Mapping[str, Any]]:
    for r in resources:
        if r.type == STACK_TYPE:
            return r.urn, r.props
    return None, {}


def _stack_dmarc(resources: Sequence[Resource], ctx: Context) -> list[tuple[str, str | None]]:
    urn, outputs = stack_outputs(resources)
    return [(m, urn) for m in check_dmarc_table(outputs, ctx)]


def _stack_backups(resources: Sequence[Resource], ctx: Context) -> list[tuple[str, str | None]]:
    urn, outputs = stack_outputs(resources)
    return [(m, urn) for m in backup_problems(resources, outputs, ctx)]


RESOURCE_RULES: tuple[ResourceRule, ...] = (
    ResourceRule(
        "no-private-port-open-to-world",
        "No SSH, PostgreSQL or admin port is open to 0.0.0.0/0 or ::/0 in a cloud firewall.",
        lambda t, p, _ctx: check_firewall(t, p),
    ),
    ResourceRule(
        "dmarc-enforced-in-prod",
        "Production publishes DMARC p=quarantine or p=reject, never p=none.",
        check_dmarc,
    ),
    ResourceRule(
        "remote-steps-over-vpn",
        "Remote commands connect only to WireGuard (VPN) addresses.",
        check_remote_host,
    ),
)

STACK_RULES: tuple[StackRule, ...] = (
    StackRule(
        "dmarc-enforced-in-prod-table",
        "Production's DNS record table (also for manual DNS) publishes DMARC p=quarantine or p=reject.",
        _stack_dmarc,
    ),
    StackRule(
        "backups-enabled-in-prod",
        "Production takes backups: the Backup component's remote step exists, and backups are on, with a repository.",
        _stack_backups,
    ),
)


@dataclass(frozen=True)
class Violation:
    policy: str
    urn: str | None
    message: str


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)

    def by_policy(self, name: str) -> list[Violation]:
        return [v for v in self.violations if v.policy == name]


def evaluate(resources: Sequence[Resource], ctx: Context) -> Report:
    """Every rule over every resource, as the policy pack would run them during `pulumi up`."""
    report = Report()
    for rule in RESOURCE_RULES:
        for r in resources:
            report.violations += [Violation(rule.name, r.urn, m) for m in rule.check(r.type, r.props, ctx)]
    for stack_rule in STACK_RULES:
        report.violations += [Violation(stack_rule.name, u, m) for m, u in stack_rule.check(resources, ctx)]
    return report


def violations_of(resources: Sequence[Resource], ctx: Context) -> Iterator[str]:
    """Readable lines, for assertion messages and `python -m policy.rules`-style reports."""
    for v in evaluate(resources, ctx).violations:
        yield f"[{v.policy}] {v.urn or '(stack)'}: {v.message}"
