"""The DNS record plan: every record the mail system needs, computed from settings alone.

Each record is a `components.dns.records.Record` (its data a dnspython Rdata); values known only
after `pulumi up` (the host's addresses, DKIM public keys) appear as `Ref`s. The Cloudflare
component, the `dnsRecords` output, the lab's DNS server, docs/dns_checklist.md and the doctor all
take this plan.
"""

from __future__ import annotations

import hashlib

from components.dav.plan import HTTPS_PORT, calendars_public
from components.dns.records import Record, Ref, caa, cname, mx, srv, txt, within, zone_of
from components.firewall.policy import Port, port_policy
from components.keys.rotation import DkimPhase, phase_without_clock
from settings import Settings


def mta_sts_policy(settings: Settings) -> str:
    """The text served at https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461)."""
    cfg = settings.config
    # `testing` while DMARC only monitors: failures are reported (TLS-RPT), mail still flows.
    mode = "testing" if cfg.dmarc.policy == "none" else "enforce"
    return f"version: STSv1\nmode: {mode}\nmx: {cfg.hostname}\nmax_age: 604800\n"


def mta_sts_id(settings: Settings) -> str:
    """Changes whenever the policy text changes, as RFC 8461 requires."""
    return hashlib.sha256(mta_sts_policy(settings).encode()).hexdigest()[:20]


def spf(settings: Settings) -> str:
    cfg = settings.config
    parts = ["v=spf1", "mx"]
    if cfg.relay and cfg.relay.spf_include:
        parts.append(f"include:{cfg.relay.spf_include}")
    # Soft-fail while DMARC is only monitoring; hard-fail once it is enforced.
    parts.append("~all" if cfg.dmarc.policy == "none" else "-all")
    return " ".join(parts)


def dmarc_rua(settings: Settings, domain: str) -> str:
    """The address a domain's DMARC (and TLS-RPT) reports go to: sams:dmarc.rua or its postmaster."""
    return settings.config.dmarc.rua or f"postmaster@{domain}"


def dmarc(settings: Settings, domain: str) -> str:
    d = settings.config.dmarc
    parts = [f"v=DMARC1; p={d.policy}"]
    if d.pct != 100:
        parts.append(f"pct={d.pct}")
    parts.append(f"rua=mailto:{dmarc_rua(settings, domain)}")
    return "; ".join(parts)


def domains(settings: Settings) -> list[str]:
    """The zones SAMS publishes in: the mail list's domains."""
    return [d.name for d in settings.mail.domains]


def report_authorizations(settings: Settings) -> tuple[list[Record], list[str]]:
    """RFC 7489 section 7.1: a domain whose DMARC reports go to another domain needs that domain's
    consent, `<domain>._report._dmarc.<rua domain> TXT "v=DMARC1"`, or receivers send no reports.

    Returns the records SAMS publishes (the rua domain is one of its own zones) and a warning for
    each rua domain outside them (its owner must publish the record; SAMS cannot).
    """
    ours = domains(settings)
    records: list[Record] = []
    warnings: list[str] = []
    for domain in ours:
        rua = dmarc_rua(settings, domain).rpartition("@")[2].lower()
        if within(rua, domain):
            continue  # the domain itself (or a name under it): no authorization needed
        name = f"{domain}._report._dmarc.{rua}"
        if not any(within(rua, z) for z in ours):
            warnings.append(
                f"sams:dmarc.rua sends {domain}'s DMARC reports to {rua}, which is not a SAMS domain: "
                f'{rua} must publish {name} TXT "v=DMARC1" (RFC 7489 section 7.1), or receivers send none'
            )
            continue
        ttl, purpose = settings.config.dns.ttl, f"{rua} accepts DMARC reports about {domain}"
        records.append(Record(zone_of(rua, ours), name, "TXT", ttl, txt("v=DMARC1"), purpose))
    return records, warnings


def dkim_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def dkim_ref(domain: str, selector: str) -> Ref:
    """'dkim:<selector>._domainkey.<domain>': one per (domain, selector) key."""
    return Ref(f"dkim:{dkim_name(domain, selector)}")


def _dkim_purpose(selector: str, phase: DkimPhase) -> str:
    if len(phase.published) == 1:
        return "DKIM public key"
    when = f"{phase.next_change:%Y-%m-%d %H:%M} UTC" if phase.next_change else "later"
    if phase.phase == "publishing":
        if selector == phase.signing:
            return f"DKIM public key ({selector}, signing until {when})"
        return f"DKIM public key ({selector}, new: signs from {when})"
    if selector == phase.signing:
        return f"DKIM public key ({selector}, signing)"
    return f"DKIM public key ({selector}, old: kept for mail signed before the switch, removed at {when})"


def dkim_records(domain: str, phase: DkimPhase, ttl: int) -> list[Record]:
    """One TXT record per published selector (the value: dkim_ref, split into 255-byte strings)."""
    return [
        Record(domain, dkim_name(domain, s), "TXT", ttl, dkim_ref(domain, s), _dkim_purpose(s, phase))
        for s in phase.published
    ]


# RFC 6186 / RFC 8314 client services, each with the port policy's service name (firewall/policy.py,
# whose port it advertises) and its SRV priority: implicit TLS (0) before STARTTLS (10), RFC 8314 5.1.
CLIENT_SRV: tuple[tuple[str, int, str], ...] = (
    ("submissions", 0, "RFC 8314: mail submission over implicit TLS"),
    ("submission", 10, "RFC 6186: mail submission with STARTTLS"),
    ("imaps", 0, "RFC 6186: IMAP over TLS"),
    ("imap", 10, "RFC 6186: IMAP with STARTTLS"),
    ("pop3s", 0, "RFC 6186: POP3 over TLS"),
    ("pop3", 10, "RFC 6186: POP3 with STARTTLS"),
)


def client_srv(settings: Settings, domain: str) -> list[Record]:
    """One SRV per client service, saying what the firewall's port policy does: a service whose port
    is public points at the host; any other gets target "." (RFC 2782: not offered at this domain)."""
    cfg = settings.config
    public: dict[str, Port] = {p.service: p for p in port_policy(cfg) if p.exposure == "public"}
    records = []
    for service, priority, purpose in CLIENT_SRV:
        name = f"_{service}._tcp.{domain}"
        port = public.get(service)
        if port:
            data = srv(priority, 1, port.number, cfg.hostname)
            records.append(Record(domain, name, "SRV", cfg.dns.ttl, data, purpose))
        else:
            records.append(Record(domain, name, "SRV", cfg.dns.ttl, srv(0, 0, 0, "."), f"{purpose}: not offered"))
    return records


# RFC 6764 CalDAV/CardDAV over TLS: nginx's https://<hostname>/ (port 443) when Radicale is offered to
# the internet; the well-known redirects there take the client to /dav/.
DAV_SRV: tuple[tuple[str, str], ...] = (
    ("caldavs", "RFC 6764: calendars (CalDAV over TLS)"),
    ("carddavs", "RFC 6764: contacts (CardDAV over TLS)"),
)


def dav_srv(settings: Settings, domain: str) -> list[Record]:
    """CalDAV and CardDAV SRV: the host on 443 when calendars are on and webmail public, else "."
    (RFC 2782: not offered), as client_srv says for a closed port: a VPN-only service is not advertised."""
    cfg = settings.config
    records = []
    for service, purpose in DAV_SRV:
        name = f"_{service}._tcp.{domain}"
        if calendars_public(cfg):
            records.append(Record(domain, name, "SRV", cfg.dns.ttl, srv(0, 1, HTTPS_PORT, cfg.hostname), purpose))
        else:
            records.append(Record(domain, name, "SRV", cfg.dns.ttl, srv(0, 0, 0, "."), f"{purpose}: not offered"))
    return records


def plan(settings: Settings, *, has_ipv6: bool, dkim: DkimPhase | None = None) -> tuple[Record, ...]:
    """Every record; `dkim` is the rotation phase (required when sams:dkim.rotation is set)."""
    cfg = settings.config
    dkim_phase = dkim or phase_without_clock(cfg.dkim)
    host = cfg.hostname
    ttl = cfg.dns.ttl
    records: list[Record] = []
    host_zone = zone_of(host, domains(settings)) if cfg.dns.provider == "cloudflare" else host
    records.append(Record(host_zone, host, "A", ttl, Ref("ipv4"), "the mail host"))
    if has_ipv6:
        records.append(Record(host_zone, host, "AAAA", ttl, Ref("ipv6"), "the mail host over IPv6"))

    for domain in settings.mail.domains:
        d = domain.name
        rec = [
            Record(d, d, "MX", ttl, mx(10, host), "where other servers deliver mail"),
            Record(d, d, "TXT", ttl, txt(spf(settings)), "SPF: who may send as this domain"),
            *dkim_records(d, dkim_phase, ttl),
            Record(d, f"_dmarc.{d}", "TXT", ttl, txt(dmarc(settings, d)), "DMARC policy and reports"),
            Record(
                d,
                f"_smtp._tls.{d}",
                "TXT",
                ttl,
                txt(f"v=TLSRPTv1; rua=mailto:{dmarc_rua(settings, d)}"),
                "TLS-RPT: where senders report TLS failures",
            ),
            *client_srv(settings, d),
            *dav_srv(settings, d),
            *(
                Record(d, d, "CAA", ttl, caa(0, "issue", ca), f"{ca} may issue (sams:acme.caaIssuers)")
                for ca in cfg.acme.caa_issuers
            ),
            Record(d, d, "CAA", ttl, caa(0, "issuewild", ";"), "no wildcard certificates"),
        ]
        if cfg.public_web:
            # Only when nginx serves them (components/tls): a published MTA-STS id without its HTTPS
            # host makes senders fail a fetch on every delivery, and clients would ask a host that
            # does not answer for their settings.
            rec += [
                Record(d, f"autoconfig.{d}", "CNAME", ttl, cname(host), "Thunderbird autoconfig"),
                Record(d, f"autodiscover.{d}", "CNAME", ttl, cname(host), "Outlook autodiscover"),
                Record(d, f"_autodiscover._tcp.{d}", "SRV", ttl, srv(0, 0, 443, host), "Outlook autodiscover"),
                Record(d, f"mta-sts.{d}", "CNAME", ttl, cname(host), "MTA-STS policy host (HTTPS)"),
                Record(d, f"_mta-sts.{d}", "TXT", ttl, txt(f"v=STSv1; id={mta_sts_id(settings)}"), "MTA-STS policy id"),
            ]
        records += rec
    records += report_authorizations(settings)[0]
    return tuple(records)
