"""Client autoconfiguration (pure): Thunderbird's config-v1.1.xml, Outlook's POX autodiscover.xml
and Apple's configuration profile (apple.mobileconfig: mail, and calendars and contacts when offered).

A user who types only an address into Thunderbird or Outlook gets the servers from
https://autoconfig.<domain>/mail/config-v1.1.xml or https://autodiscover.<domain>/autodiscover/autodiscover.xml,
both served by nginx on this host (components/tls/certs.py, the tls-web step). Both documents are
rendered from the same per-domain entry as the `clientSettings` stack output and the Gmail guide
(components.mail.clients.client_settings), and advertise only what the port policy opens to the
internet: IMAP or POP3 set to VPN-only (sams:clientAccess) is left out; submission is always public.
The login name is always the full address: Thunderbird fills in its own %EMAILADDRESS%; for
Outlook, nginx puts the address Outlook asked about in place of ADDRESS (see the nginx site).

An iPhone, iPad or Mac gets https://autoconfig.<domain>/apple.mobileconfig: IMAP and SMTP from the
same entry, and CalDAV and CardDAV (Radicale at https://<hostname>/dav/) when calendars are on and
the webmail is public. With `?emailaddress=<address>` (plainly one) nginx serves the variant whose
ADDRESS it replaces by that address; without, the profile names no account and the device asks.
"""

from __future__ import annotations

import plistlib
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from components.firewall.policy import public_ports
from components.remote.steps import File
from components.render import render
from settings import Settings

# Per mail domain: CLIENTS_ROOT/<domain>/ is the document root of autoconfig.<domain> and autodiscover.<domain>.
CLIENTS_ROOT = "/var/www/sams/clients"
THUNDERBIRD_PATH = "/mail/config-v1.1.xml"
OUTLOOK_PATH = "/autodiscover/autodiscover.xml"
# Outlook's login name in the file as staged; nginx replaces it with the requested address.
ADDRESS = "%EMAILADDRESS%"
# nginx's local server that does that replacement (the autodiscover hosts proxy to it). Loopback
# TCP, not a unix socket: a socket file left by a killed nginx would stop the next start (EADDRINUSE).
AUTODISCOVER_LOCAL = "127.0.0.1:8380"
# Apple's configuration profile, at this path of autoconfig.<domain>; the variant naming the account
# (ADDRESS in it) is staged beside it and served by nginx's local server when the query has one.
APPLE_PROFILE_PATH = "/apple.mobileconfig"
APPLE_PROFILE_ADDRESS_PATH = "/apple-address.mobileconfig"
APPLE_PROFILE_TYPE = "application/x-apple-aspen-config"
# The templates stand for every domain's file: var/www/sams/clients/domain/... lands at CLIENTS_ROOT/<domain>/...
_TEMPLATE_DIR = "var/www/sams/clients/domain"

Kind = Literal["imap", "pop3", "smtp"]

# clientSettings' human wording -> how each client names the transport security.
_THUNDERBIRD_SOCKET = {"SSL/TLS": "SSL", "STARTTLS": "STARTTLS"}
_OUTLOOK_ENCRYPTION = {"SSL/TLS": "SSL", "STARTTLS": "TLS"}


@dataclass(frozen=True)
class Server:
    kind: Kind
    host: str
    port: int
    security: str  # as in clientSettings: "SSL/TLS" or "STARTTLS"

    @property
    def socket_type(self) -> str:
        return _THUNDERBIRD_SOCKET[self.security]

    @property
    def encryption(self) -> str:
        return _OUTLOOK_ENCRYPTION[self.security]


def open_tcp_ports(settings: Settings) -> frozenset[int]:
    return frozenset(p.number for p in public_ports(settings.config) if p.proto == "tcp")


def public_servers(client: Mapping[str, Any], open_ports: Collection[int]) -> list[Server]:
    """The servers of one clientSettings entry a client on the internet can reach, in the order a
    client should prefer them: IMAP before POP3, then submission as clientSettings lists it."""
    entries: list[tuple[Kind, Mapping[str, Any]]] = [("imap", client["imap"]), ("pop3", client["pop3"])]
    entries += [("smtp", s) for s in client["smtp"]]
    return [
        Server(kind, str(e["host"]), int(e["port"]), str(e["security"]))
        for kind, e in entries
        if int(e["port"]) in open_ports
    ]


def thunderbird_config(domain: str, client: Mapping[str, Any], open_ports: Collection[int]) -> str:
    """config-v1.1.xml (Thunderbird's autoconfig format) for `domain`."""
    servers = public_servers(client, open_ports)
    return render(
        "tls",
        f"{_TEMPLATE_DIR}{THUNDERBIRD_PATH}.j2",
        domain=domain,
        address=ADDRESS,
        incoming=[s for s in servers if s.kind != "smtp"],
        outgoing=[s for s in servers if s.kind == "smtp"],
    )


def outlook_autodiscover(domain: str, client: Mapping[str, Any], open_ports: Collection[int]) -> str:
    """Outlook's POX autodiscover response for `domain`: one Protocol per type, the first public one."""
    first: dict[Kind, Server] = {}
    for s in public_servers(client, open_ports):
        first.setdefault(s.kind, s)
    protocols = list(first.values())
    return render("tls", f"{_TEMPLATE_DIR}{OUTLOOK_PATH}.j2", domain=domain, protocols=protocols, address=ADDRESS)


def _payload(payload_type: str, name: str, domain: str, display: str, body: dict[str, Any]) -> dict[str, Any]:
    """One payload; its identifier and UUID derive from the domain and `name`, so a profile installed
    again replaces the one before instead of adding a second account."""
    identifier = ".".join(reversed(domain.split("."))) + f".sams.{name}"
    return {
        "PayloadType": payload_type,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, identifier)).upper(),
        "PayloadVersion": 1,
        "PayloadDisplayName": display,
        **body,
    }


def apple_profile(
    domain: str, client: Mapping[str, Any], open_ports: Collection[int], dav_host: str | None, *, named: bool
) -> str:
    """apple.mobileconfig for `domain`: the first public incoming server (IMAP, else POP3) and the
    first submission server clientSettings lists, all over TLS with a password; CalDAV and CardDAV at
    `dav_host` (None: not offered). `named`: the account's address and logins are ADDRESS (nginx puts
    the asked address in), else absent and the device asks for them."""
    from components.dav.plan import HTTPS_PORT, URL_PATH  # here: components.dav imports settings only

    servers = public_servers(client, open_ports)
    incoming = next((s for s in servers if s.kind != "smtp"), None)
    outgoing = next((s for s in servers if s.kind == "smtp"), None)
    who = {"EmailAddress": ADDRESS} if named else {}
    login = ADDRESS if named else None
    payloads: list[dict[str, Any]] = []
    if incoming is not None and outgoing is not None:
        mail: dict[str, Any] = {
            "EmailAccountDescription": f"Mail ({domain})",
            "EmailAccountType": "EmailTypeIMAP" if incoming.kind == "imap" else "EmailTypePOP",
            **who,
            "IncomingMailServerHostName": incoming.host,
            "IncomingMailServerPortNumber": incoming.port,
            "IncomingMailServerUseSSL": True,
            "IncomingMailServerAuthentication": "EmailAuthPassword",
            "OutgoingMailServerHostName": outgoing.host,
            "OutgoingMailServerPortNumber": outgoing.port,
            "OutgoingMailServerUseSSL": True,
            "OutgoingMailServerAuthentication": "EmailAuthPassword",
            "OutgoingPasswordSameAsIncomingPassword": True,
        }
        if login:
            mail["IncomingMailServerUsername"] = mail["OutgoingMailServerUsername"] = login
        payloads.append(_payload("com.apple.mail.managed", "mail", domain, f"Mail ({domain})", mail))
    if dav_host is not None:
        for kind, prefix, what in (("caldav", "CalDAV", "Calendars"), ("carddav", "CardDAV", "Contacts")):
            body: dict[str, Any] = {
                f"{prefix}AccountDescription": f"{what} ({domain})",
                f"{prefix}HostName": dav_host,
                f"{prefix}Port": HTTPS_PORT,
                f"{prefix}PrincipalURL": f"https://{dav_host}{URL_PATH}",
                f"{prefix}UseSSL": True,
            }
            if login:
                body[f"{prefix}Username"] = login
            payloads.append(_payload(f"com.apple.{kind}.account", kind, domain, f"{what} ({domain})", body))
    profile = _payload(
        "Configuration",
        "profile",
        domain,
        f"{domain} mail" + (", calendars and contacts" if dav_host else ""),
        {
            "PayloadDescription": f"The servers for your {domain} account; your password is asked when you install it.",
            "PayloadRemovalDisallowed": False,
            "PayloadContent": payloads,
        },
    )
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=False).decode()


def client_files(settings: Settings) -> tuple[File, ...]:
    """Both documents of every domain, where nginx serves them from."""
    # Here, not at the top: components.mail imports components.tls.certs, which imports this module.
    from components.dav.plan import calendars_public
    from components.mail.clients import client_settings

    clients = client_settings(settings)
    ports = open_tcp_ports(settings)
    dav_host = str(settings.config.hostname) if calendars_public(settings.config) else None
    files: list[File] = []
    for domain in settings.mail.domains:
        d, client = domain.name, clients[domain.name]
        files.append(File(f"{CLIENTS_ROOT}/{d}{THUNDERBIRD_PATH}", thunderbird_config(d, client, ports)))
        files.append(File(f"{CLIENTS_ROOT}/{d}{OUTLOOK_PATH}", outlook_autodiscover(d, client, ports)))
        for path, named in ((APPLE_PROFILE_PATH, False), (APPLE_PROFILE_ADDRESS_PATH, True)):
            files.append(File(f"{CLIENTS_ROOT}/{d}{path}", apple_profile(d, client, ports, dav_host, named=named)))
    return tuple(files)
