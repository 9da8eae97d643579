"""Checks that span several entries; each yields a Problem naming its own key path."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network
from urllib.parse import urlsplit

from settings.errors import MISSING, Path
from settings.mail_list import MailList
from settings.stack import CLAMAV_MIN_MEMORY_GB, LETS_ENCRYPT, LETS_ENCRYPT_CAA, BackupCopy, BackupSettings, StackConfig
from settings.times import format_duration

# Docker creates docker0 on 172.17.0.0/16 even with host networking: a VPN there would lose its route.
DOCKER_DEFAULT_BRIDGE = IPv4Network("172.17.0.0/16")

Finding = tuple[Path, object, str]


def check_stack(cfg: StackConfig) -> Iterator[Finding]:
    if getattr(cfg, cfg.provider) is None:
        yield (cfg.provider,), None, f"provider is {cfg.provider!r} but this section is missing"
    wg = cfg.wireguard
    vpn = wg.network
    for key, addr in (("address", wg.address), ("hubAddress", wg.hub_address)):
        if addr not in vpn or addr in (vpn.network_address, vpn.broadcast_address):
            yield ("wireguard", key), str(addr), f"is not a host address of wireguard.network {vpn}"
    if wg.address == wg.hub_address:
        yield ("wireguard", "hubAddress"), str(wg.hub_address), "must differ from wireguard.address"
    if cfg.oci is not None and not cfg.oci.subnet_cidr.subnet_of(cfg.oci.vcn_cidr):
        yield ("oci", "subnetCidr"), str(cfg.oci.subnet_cidr), f"is not inside oci.vcnCidr {cfg.oci.vcn_cidr}"
    if cfg.backup.enabled and not cfg.backup.repository and cfg.provider == "existing":
        yield (
            ("backup", "repository"),
            None,
            "backup.enabled is true and provider existing has no object storage the program can create: "
            "name a restic repository",
        )
    copy = cfg.backup.copy_to
    if copy is not None and copy.repository.startswith("s3:") and (cfg.backup.repository or "s3:").startswith("s3:"):
        yield (
            ("backup", "copyTo", "repository"),
            copy.repository,
            "restic takes one S3 key from its environment, so an S3 repository cannot be copied to another "
            "S3 repository: make one of them a rest-server (rest:https://...)",
        )
    yield from check_sftp_pins(cfg)
    mon = cfg.monitoring
    if mon.enabled and mon.mode == "external" and mon.email_to:
        yield (
            ("monitoring", "emailTo"),
            mon.email_to,
            "mode external sends no alerts from the host (your own Alertmanager does): remove emailTo or use mode host",
        )
    yield from check_journal_upload(cfg)
    if cfg.backup.restore and not cfg.backup.enabled:
        yield ("backup", "restore"), cfg.backup.restore, "restoring needs the repository: set backup.enabled"
    if cfg.oci is not None and cfg.provider == "oci" and vpn.overlaps(cfg.oci.vcn_cidr):
        yield ("wireguard", "network"), str(vpn), f"overlaps oci.vcnCidr {cfg.oci.vcn_cidr}"
    if vpn.overlaps(DOCKER_DEFAULT_BRIDGE):
        yield ("wireguard", "network"), str(vpn), f"overlaps Docker's bridge network {DOCKER_DEFAULT_BRIDGE}"
    if cfg.existing is not None and cfg.provider == "existing" and cfg.existing.ipv4 in vpn:
        yield ("existing", "ipv4"), str(cfg.existing.ipv4), f"is inside the VPN network {vpn}"
    if cfg.resolver.reserved_zones and not cfg.resolver.forwarders:
        yield (
            ("resolver", "reservedZones"),
            cfg.resolver.reserved_zones,
            "resolving from the root finds nothing under a special-use name: set resolver.forwarders to the "
            "DNS server that serves these zones",
        )
    if cfg.acme.challenge == "http-01" and not cfg.public_web:
        yield (
            ("acme", "challenge"),
            cfg.acme.challenge,
            "http-01 needs port 80: set publicWeb, or use dns-01-cloudflare",
        )
    if cfg.acme.directory != LETS_ENCRYPT and cfg.acme.caa_issuers == [LETS_ENCRYPT_CAA]:
        yield (
            ("acme", "caaIssuers"),
            cfg.acme.caa_issuers,
            f"acme.directory {cfg.acme.directory} is not Let's Encrypt, but the CAA records would allow only "
            "letsencrypt.org: name that CA's CAA domain here",
        )
    if not cfg.wireguard.network.is_private:
        yield ("wireguard", "network"), str(vpn), "the VPN network must be a private range"
    yield from check_clamav_memory(cfg)
    yield from check_webmail(cfg)
    yield from check_dkim_rotation(cfg)


def check_webmail(cfg: StackConfig) -> Iterator[Finding]:
    web = cfg.webmail
    if web.exposure == "public" and web.enabled and not cfg.public_web:
        yield (
            ("webmail", "exposure"),
            web.exposure,
            "public webmail is served on port 443 of the public address: set publicWeb, or use exposure vpn",
        )


def check_sftp_pins(cfg: StackConfig) -> Iterator[Finding]:
    """An sftp: repository needs its server's host key pinned, and a pin needs an sftp: repository."""
    places: list[tuple[Path, BackupSettings | BackupCopy]] = [(("backup",), cfg.backup)]
    if cfg.backup.copy_to is not None:
        places.append((("backup", "copyTo"), cfg.backup.copy_to))
    for path, place in places:
        sftp = (place.repository or "").startswith("sftp:")
        if sftp and place.sftp_host_key is None:
            yield (
                (*path, "sftpHostKey"),
                MISSING,
                f"required with the sftp: repository {place.repository}: the server's public host key, one "
                "line as in its /etc/ssh/ssh_host_ed25519_key.pub (compare `ssh-keyscan -t ed25519 HOST`)",
            )
        if place.sftp_host_key is not None and not sftp:
            yield (*path, "sftpHostKey"), place.sftp_host_key, "is only for an sftp: repository: remove it"


def check_journal_upload(cfg: StackConfig) -> Iterator[Finding]:
    """The journal goes to a peer on the tunnel, never the host itself or anywhere outside."""
    url = cfg.monitoring.journal_upload_url
    if url is None:
        return
    key: Path = ("monitoring", "journalUploadUrl")
    if not cfg.monitoring.enabled:
        yield key, url, "forwarding the journal is part of monitoring: set monitoring.enabled, or remove this key"
    wg = cfg.wireguard
    address = IPv4Address(urlsplit(url).hostname or "")
    if address not in wg.network or address in (wg.network.network_address, wg.network.broadcast_address):
        yield (
            key,
            url,
            f"{address} is not a host address of wireguard.network {wg.network}: the journal travels over the "
            f"tunnel only (the hub is {wg.hub_address})",
        )
    elif address == wg.address:
        yield key, url, f"{address} is the mail host itself (wireguard.address): name the collector's address"


# Vultr's plan ids end in their memory: vc2-1c-2gb, vhf-2c-4gb, voc-c-2c-4gb-50s...
_VULTR_PLAN_MEMORY = re.compile(r"-(\d+)gb(?:-|$)")


def host_memory_gb(cfg: StackConfig) -> tuple[Path, object, float] | None:
    """The host's memory where the stack says it (OCI's shape size, Vultr's plan id): the key, its
    value and the size in GB; None where the stack does not say (an existing host)."""
    if cfg.provider == "oci" and cfg.oci is not None:
        return ("oci", "memoryGbs"), cfg.oci.memory_gbs, cfg.oci.memory_gbs
    if cfg.provider == "vultr" and cfg.vultr is not None:
        found = _VULTR_PLAN_MEMORY.search(cfg.vultr.plan)
        return (("vultr", "plan"), cfg.vultr.plan, float(found.group(1))) if found else None
    return None


def check_clamav_memory(cfg: StackConfig) -> Iterator[Finding]:
    memory = host_memory_gb(cfg) if cfg.antivirus.clamav else None
    if memory is None:
        return
    key, value, gb = memory
    if gb < CLAMAV_MIN_MEMORY_GB:
        yield (
            key,
            value,
            f"has {gb:g} GB of memory, but antivirus.clamav needs at least {CLAMAV_MIN_MEMORY_GB} "
            "(ClamAV's signatures take ~1.2 GiB, twice that while they reload): a larger host, or clamav off",
        )


# The new DKIM record must reach resolvers, negative caches included, before mail is signed with it.
MIN_DKIM_SWITCH = timedelta(hours=1)


def check_dkim_rotation(cfg: StackConfig) -> Iterator[Finding]:
    rot = cfg.dkim.rotation
    if rot is None:
        return
    path: Path = ("dkim", "rotation")
    if rot.to == cfg.dkim.selector:
        yield (
            path + ("to",),
            rot.to,
            f"must differ from dkim.selector ({cfg.dkim.selector}): a rotation needs a new key",
        )
    if rot.switch_after < MIN_DKIM_SWITCH:
        yield (
            path + ("switchAfter",),
            format_duration(rot.switch_after),
            f"must be at least {format_duration(MIN_DKIM_SWITCH)}: receivers must see the {rot.to} record "
            "before mail is signed with it",
        )
    if rot.withdraw_after <= rot.switch_after:
        yield (
            path + ("withdrawAfter",),
            format_duration(rot.withdraw_after),
            f"must be later than switchAfter ({format_duration(rot.switch_after)}): mail signed with "
            f"{cfg.dkim.selector} just before the switch is still being verified",
        )


def check_hostname_zone(cfg: StackConfig, mail: MailList) -> Iterator[Finding]:
    if cfg.dns.provider != "cloudflare":
        return
    names = [d.name for d in mail.domains]
    if not any(cfg.hostname == n or cfg.hostname.endswith("." + n) for n in names):
        yield (
            ("hostname",),
            cfg.hostname,
            (
                f"is in none of the mail list's domains ({', '.join(names)}); its A record needs one of "
                "their zones, or set sams:dns.provider to manual"
            ),
        )


def check_mail_list(mail: MailList) -> Iterator[Finding]:
    domains: dict[str, int] = {}
    for di, domain in enumerate(mail.domains):
        if domain.name in domains:
            yield (
                ("domains", di, "name"),
                domain.name,
                f"domain declared twice (first at domains[{domains[domain.name]}])",
            )
            continue
        domains[domain.name] = di
    local: dict[str, set[str]] = {}
    for domain in mail.domains:
        names = local.setdefault(domain.name, set())
        names.update(u.name for u in domain.users)
        names.update(a.name for a in domain.aliases)

    for di, domain in enumerate(mail.domains):
        seen_users: dict[str, int] = {}
        for ui, user in enumerate(domain.users):
            if user.name in seen_users:
                yield (
                    ("domains", di, "users", ui, "name"),
                    user.name,
                    (f"user {user.name}@{domain.name} declared twice (first at users[{seen_users[user.name]}])"),
                )
            else:
                seen_users[user.name] = ui
        seen_aliases: dict[str, int] = {}
        for ai, alias in enumerate(domain.aliases):
            path: Path = ("domains", di, "aliases", ai)
            if alias.name in seen_users:
                yield path + ("name",), alias.name, f"{alias.name}@{domain.name} is both a user and an alias"
            if alias.name in seen_aliases:
                yield (
                    path + ("name",),
                    alias.name,
                    f"alias declared twice (first at aliases[{seen_aliases[alias.name]}])",
                )
            seen_aliases[alias.name] = ai
            for ti, target in enumerate(alias.to):
                yield from _check_target(path + ("to", ti), target, domain.name, local)


def _check_target(path: Path, target: str, own_domain: str, local: dict[str, set[str]]) -> Iterator[Finding]:
    lp, at, dom = target.partition("@")
    if not at:
        dom = own_domain
    elif not lp or not dom or "@" in dom or " " in target:
        yield path, target, "not an email address"
        return
    if dom in local and lp not in local[dom]:
        yield path, target, f"no user or alias {lp}@{dom} in the mail list"


def split_user_addresses(raw: object) -> Iterator[Finding]:
    """Users written as full addresses must belong to the domain they are listed under."""
    if not isinstance(raw, dict) or not isinstance(raw.get("domains"), list):
        return
    for di, domain in enumerate(raw["domains"]):
        if not isinstance(domain, dict) or not isinstance(domain.get("users"), list):
            continue
        dname = domain.get("name")
        for ui, user in enumerate(domain["users"]):
            key = "name" if isinstance(user, dict) else None
            value = user.get("name") if isinstance(user, dict) else user
            if not isinstance(value, str) or "@" not in value:
                continue
            lp, _, udom = value.partition("@")
            path: Path = ("domains", di, "users", ui) + ((key,) if key else ())
            if udom != dname:
                yield (
                    path,
                    value,
                    (
                        f"user is in domain {udom!r}, which is not the domain it is listed under ({dname!r}); "
                        f"list it under a domains entry named {udom!r}"
                    ),
                )
            elif isinstance(user, dict):
                user["name"] = lp
            else:
                domain["users"][ui] = lp


# Let's Encrypt's limit of names on one certificate (the program asks for one certificate).
MAX_CERT_NAMES = 100
# With publicWeb, each domain adds mta-sts, autoconfig and autodiscover to the hostname's certificate.
WEB_NAMES_PER_DOMAIN = 3


def check_certificate_names(cfg: StackConfig, mail: MailList) -> Iterator[Finding]:
    if not cfg.public_web:
        return
    names = 1 + WEB_NAMES_PER_DOMAIN * len(mail.domains)
    if names > MAX_CERT_NAMES:
        yield (
            ("publicWeb",),
            cfg.public_web,
            f"{len(mail.domains)} domains need {names} names on the one certificate, more than the ACME "
            f"limit of {MAX_CERT_NAMES}: at most {(MAX_CERT_NAMES - 1) // WEB_NAMES_PER_DOMAIN} domains per stack "
            "with publicWeb (split the domains across stacks, or set publicWeb: false)",
        )


def check_outbound_limits(cfg: StackConfig, mail: MailList) -> Iterator[Finding]:
    """sams:limits.outbound paces this host's own deliveries to other domains' MX hosts."""
    outbound = cfg.limits.outbound
    own = {d.name for d in mail.domains}
    seen: set[str] = set()
    for i, domain in enumerate(outbound.domains):
        path: Path = ("limits", "outbound", "domains", i)
        if domain in own:
            yield path, domain, "is one of this host's own mail domains: its mail is delivered here, not sent out"
        elif domain in seen:
            yield path, domain, "listed twice"
        seen.add(domain)
    if outbound.domains and cfg.relay is not None:
        yield (
            ("limits", "outbound", "domains"),
            outbound.domains,
            "with sams:relay every message leaves through the relay, whose addresses the receivers judge: "
            "pacing for this host's IP warm-up does not apply (leave the list empty, or remove the relay)",
        )
