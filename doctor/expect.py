"""What the doctor expects to find, from the stack's settings and its outputs (pure).

The records are the DNS plan (components/dns/plan.py) for the DKIM selectors the last `pulumi up`
published (the `dkimRotation` output), with the values only the outputs know: the host's
addresses (`publicIpv4`, `publicIpv6`) and the DKIM public keys (their entries in `dnsRecords`, a
list of components.dns.records.Record.to_json objects). Values are compared in one normal form,
components.dns.records.normal, applied alike to the plan's records and to what DNS answers.
Ports come from the port policy that renders the cloud firewall and nftables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from components.dns.plan import plan
from components.dns.records import Record, Ref, normal, txt_value
from components.firewall.policy import NEVER_PUBLIC_SERVICES, port_policy
from components.hostpaths import VMAIL_ROOT
from components.keys.rotation import DkimPhase
from doctor.model import (
    Expected,
    ExpectedRecord,
    PortSpec,
    TlsEndpoint,
    TlsMode,
    normalize_address,
    normalize_name,
)
from settings import Settings

# Who serves TLS on which public port, and how the handshake starts.
_TLS: dict[int, tuple[TlsMode, str]] = {
    25: ("smtp-starttls", "postfix"),
    465: ("implicit", "postfix"),
    587: ("smtp-starttls", "postfix"),
    993: ("implicit", "dovecot"),
    995: ("implicit", "dovecot"),
    443: ("implicit", "nginx"),
}


def output_records(outputs: Mapping[str, Any]) -> list[Record]:
    """The `dnsRecords` output as Records (none when the outputs lack it)."""
    entries = outputs.get("dnsRecords")
    if entries is None:
        return []
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise ValueError(
            "dnsRecords: not a list of records (outputs of a program from before records became JSON: "
            "run `pulumi up` with this version, then take `pulumi stack output --json` again)"
        )
    return [Record.from_json(e) for e in entries]


def resolved_values(outputs: Mapping[str, Any], records: tuple[Record, ...]) -> dict[str, str]:
    """The plan's Refs as the outputs know them (a Ref the outputs lack is simply absent)."""
    resolved: dict[str, str] = {}
    if outputs.get("publicIpv4"):
        resolved["ipv4"] = str(outputs["publicIpv4"])
    if outputs.get("publicIpv6"):
        resolved["ipv6"] = str(outputs["publicIpv6"])
    published = {r.name: r.rdata() for r in output_records(outputs) if r.type == "TXT"}
    for record in records:
        if isinstance(record.data, Ref) and record.data.key.startswith("dkim:") and record.name in published:
            resolved[record.data.key] = txt_value(published[record.name])
    return resolved


def dkim_phase_of(outputs: Mapping[str, Any]) -> DkimPhase | None:
    """The DKIM phase of the last `pulumi up` (None when the outputs do not say)."""
    summary = outputs.get("dkimRotation")
    if not isinstance(summary, Mapping):
        return None
    return DkimPhase(summary["phase"], tuple(summary["published"]), summary["signing"])


def expected_records(settings: Settings, outputs: Mapping[str, Any]) -> tuple[ExpectedRecord, ...]:
    records = plan(settings, has_ipv6=bool(outputs.get("publicIpv6")), dkim=dkim_phase_of(outputs))
    resolved = resolved_values(outputs, records)
    out = []
    for r in records:
        known = not isinstance(r.data, Ref) or r.data.key in resolved
        value, line = (normal(r.rdata(resolved)), r.line(resolved)) if known else (None, "")
        out.append(ExpectedRecord(normalize_name(r.name), r.type, value, r.purpose, line))
    return tuple(out)


def expected(stack: str, settings: Settings, outputs: Mapping[str, Any]) -> Expected:
    """Everything the checks compare with. `outputs`: `pulumi stack output --json` (or a mock run's)."""
    cfg = settings.config
    if not outputs.get("publicIpv4"):
        raise ValueError("the stack outputs have no publicIpv4: give `pulumi stack output --json` of a deployed stack")
    policy = port_policy(cfg)
    public = tuple(PortSpec(p.number, p.proto, p.service) for p in policy if p.exposure == "public")
    private = {(p.number, p.proto): p.service for p in policy if p.exposure == "vpn"}
    for number, service in NEVER_PUBLIC_SERVICES.items():
        private.setdefault((number, "tcp"), service)
    public_tcp = {p.number for p in public if p.proto == "tcp"}
    tls = tuple(TlsEndpoint(port, mode, service) for port, (mode, service) in _TLS.items() if port in public_tcp)
    return Expected(
        stack=stack,
        provider=cfg.provider,
        dns_provider=cfg.dns.provider,
        hostname=normalize_name(cfg.hostname),
        ipv4=normalize_address(str(outputs["publicIpv4"])),
        ipv6=normalize_address(str(outputs["publicIpv6"])) if outputs.get("publicIpv6") else None,
        records=expected_records(settings, outputs),
        public_ports=public,
        private_ports=tuple(PortSpec(n, proto, s) for (n, proto), s in sorted(private.items())),
        tls=tuple(sorted(tls, key=lambda t: t.port)),
        relay=(cfg.relay.host, cfg.relay.port) if cfg.relay else None,
        backup_enabled=cfg.backup.enabled,
        backup_repository=cfg.backup.repository,
        mail_root=VMAIL_ROOT,
        antivirus=cfg.antivirus.clamav,
    )
