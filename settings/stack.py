"""The stack's Pulumi config (`sams:*` keys in `Pulumi.<stack>.yaml`) as typed, validated models.

Keys are camelCase, like every Pulumi config key; structured values are set with
`pulumi config set --path 'sams:wireguard.hubPublicKey' ...`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from settings.limits import LimitsSettings
from settings.names import DomainName, SshPublicKey, WireGuardKey
from settings.times import Duration, Instant


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False)


class VultrSettings(_Config):
    region: str = "fra"
    plan: str = "vc2-1c-2gb"
    # Vultr's OS id for "Debian 13 x64 (trixie)"; check `GET /v2/os` (or `vultr-cli os list`) for yours.
    os_id: int = Field(gt=0)
    enable_ipv6: bool = True


class OciSettings(_Config):
    compartment_id: str = Field(min_length=1)
    availability_domain: str = Field(min_length=1)
    # OCI has no Debian platform image: import Debian's genericcloud qcow2 as a custom image.
    image_id: str = Field(min_length=1)
    shape: str = "VM.Standard.A1.Flex"
    ocpus: float = Field(default=1, gt=0)
    memory_gbs: float = Field(default=6, gt=0)
    boot_volume_gbs: int = Field(default=50, ge=50)
    data_volume_gbs: int = Field(default=50, ge=50)
    vcn_cidr: IPv4Network = IPv4Network("10.0.0.0/16")
    subnet_cidr: IPv4Network = IPv4Network("10.0.0.0/24")


class ExistingSettings(_Config):
    ipv4: IPv4Address
    ipv6: IPv6Address | None = None


class Bastion(_Config):
    host: str = Field(min_length=1)
    user: str = Field(min_length=1)
    port: int = Field(default=22, gt=0, lt=65536)


class WireGuardSettings(_Config):
    network: IPv4Network = Field(default=IPv4Network("10.100.0.0/24"), description="the VPN, private")
    address: IPv4Address = Field(default=IPv4Address("10.100.0.2"), description="the host on the VPN")
    port: int = Field(default=51820, gt=0, lt=65536)
    hub_public_key: WireGuardKey = Field(description="`wg pubkey` of the hub/admin peer")
    hub_address: IPv4Address = Field(default=IPv4Address("10.100.0.1"), description="the hub on the VPN")
    hub_endpoint: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$",
        description="host:port of the hub, if the host should dial it (keepalive)",
    )
    bastion: Bastion | None = Field(default=None, description="SSH jump host on the VPN for CI runners")


class ClientAccess(_Config):
    """Gmail's fetcher needs public IMAPS (993) / POP3S (995); everything else may stay VPN-only."""

    imap: Literal["public", "vpn"] = "public"
    pop3: Literal["public", "vpn"] = "public"
    managesieve: Literal["public", "vpn"] = "vpn"


class RelaySettings(_Config):
    """A smarthost for providers that block outbound port 25 (Vultr and OCI do by default)."""

    host: DomainName = Field(
        description="the relay's name: Postfix sends the password only after verifying that the relay's "
        "certificate was issued for this name by a CA the host trusts"
    )
    port: int = Field(default=587, gt=0, lt=65536)
    username: str | None = None
    # Included in SPF (include:...) when the relay signs for the domain's envelope senders.
    spf_include: str | None = None

    @field_validator("host", mode="before")
    @classmethod
    def _a_name_not_an_address(cls, value: object) -> object:
        try:
            ip_address(str(value))
        except ValueError:
            return value
        raise ValueError("give the relay's name, not an address: its certificate is verified against the name")


class DmarcSettings(_Config):
    policy: Literal["none", "quarantine", "reject"] = "none"
    rua: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    pct: int = Field(default=100, ge=0, le=100)


# A restic repository in one of restic's own URL forms: rest:https://..., s3:https://host/bucket[/path],
# or SFTP as sftp:user@host:/path (port 22) or sftp://user@host[:port]//path (a single slash: relative
# to the login's home). The SFTP login is a name, not a secret; the host authenticates with its own
# SSH key (components/backup) and accepts only the host key pinned in sams:backup.sftpHostKey.
_HOST = r"([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
_SFTP_USER = r"[A-Za-z0-9._][A-Za-z0-9._-]*"
SFTP_PATTERN = rf"^sftp:(?://{_SFTP_USER}@{_HOST}(:\d{{1,5}})?/\S+|{_SFTP_USER}@{_HOST}:\S+)$"
REPOSITORY_PATTERN = rf"^(rest:https?://[^\s@]+|s3:https?://[^\s@]+/[^\s@]+|{SFTP_PATTERN[1:-1]})$"
# systemd's OnCalendar forms SAMS accepts: a shorthand, or `[weekdays] *-*-* hh:mm[:ss]` (weekdays
# as Mon or Mon,Thu; dates as systemd writes them, e.g. *-*-* or *-*-01).
_DAY = "(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_TIME = "([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?"
CALENDAR_PATTERN = rf"^(daily|weekly|monthly|({_DAY}(,{_DAY})* )?[*0-9,]+-[*0-9,]+-[*0-9,]+ {_TIME})$"
WEEKDAYS = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def _repository(value: str) -> str:
    if value.startswith("sftp:"):
        if not re.match(SFTP_PATTERN, value):
            raise ValueError(
                "not an SFTP repository restic reads: give sftp:user@host:/path or sftp://user@host:port//path"
            )
        return value
    if re.search(r"//[^/@]*@", value):
        raise ValueError("no login in the URL: it would be in the stack file; set sams:backupKeyId/KeySecret")
    if not re.match(REPOSITORY_PATTERN, value):
        raise ValueError(
            "not a restic repository: give rest:https://host:8000/path/, s3:https://endpoint/bucket "
            "or sftp:user@host:/path"
        )
    return value


def _calendar(value: str) -> str:
    if not re.match(CALENDAR_PATTERN, value):
        raise ValueError(
            "not a schedule SAMS accepts: daily, weekly, monthly or a systemd OnCalendar time such as "
            "'*-*-* 02:30:00' or 'Sun *-*-* 03:00'"
        )
    return value


Repository = Annotated[str, AfterValidator(_repository)]
Calendar = Annotated[str, AfterValidator(_calendar)]


class BackupKeep(_Config):
    """restic forget's --keep-daily/--keep-weekly/--keep-monthly: which snapshots survive a prune."""

    daily: int = Field(default=7, ge=1)
    weekly: int = Field(default=5, ge=0)
    monthly: int = Field(default=12, ge=0)


SFTP_HOST_KEY_HELP = (
    "the SFTP server's public host key, one line as in its /etc/ssh/ssh_host_ed25519_key.pub "
    "('ssh-ed25519 AAAA...'): the host refuses any other server; required with an sftp: repository"
)


class BackupCopy(_Config):
    """A second copy of the repository (restic copy), e.g. monthly to long-term storage."""

    repository: Repository = Field(description="the second restic repository")
    sftp_host_key: SshPublicKey | None = Field(default=None, description=SFTP_HOST_KEY_HELP)
    schedule: Calendar = Field(default="monthly", description="systemd OnCalendar of `restic copy`")


class BackupSettings(_Config):
    """Nightly encrypted restic snapshots off the host (components/backup, docs/backup.md)."""

    enabled: bool = False
    repository: Repository | None = Field(
        default=None,
        description=(
            "the restic repository (rest:https://host:8000/path/, s3:https://endpoint/bucket/path or "
            "sftp:user@host:/path); unset with provider oci or vultr: the program creates a bucket there"
        ),
    )
    sftp_host_key: SshPublicKey | None = Field(default=None, description=SFTP_HOST_KEY_HELP)
    schedule: Calendar = Field(default="*-*-* 02:30:00", description="systemd OnCalendar of the nightly run (UTC)")
    randomized_delay: Duration = Field(
        default=timedelta(hours=1), description="systemd RandomizedDelaySec: spreads many hosts' runs"
    )
    keep: BackupKeep = Field(default_factory=BackupKeep)
    forget: bool = Field(
        default=True,
        description=(
            "the nightly run applies `keep` (restic forget --prune); false where the host's credential is "
            "append-only and the backup server prunes (docs/backup.md)"
        ),
    )
    read_data_subset: str = Field(
        default="10%",
        pattern=r"^(\d{1,2}(\.\d+)?%|100%|\d+/\d+)$",
        description="restic check --read-data-subset on `read_data_on` (every run checks the structure)",
    )
    read_data_on: WEEKDAYS = Field(default="Sun", description="the weekday whose run also reads data back")
    server_ca: str | None = Field(
        default=None,
        pattern=r"^-----BEGIN CERTIFICATE-----\n(.|\n)+-----END CERTIFICATE-----\n?$",
        description="PEM of a private CA the repository's HTTPS certificate comes from (restic --cacert)",
    )
    copy_to: BackupCopy | None = Field(default=None, description="a second copy of every snapshot")
    restore: str | None = Field(
        default=None,
        pattern=r"^(latest|[0-9a-f]{8,64})$",
        description=(
            "on a host that has never run SAMS's mail (a new or replaced host), restore this snapshot "
            "(latest, or an id) before Postfix and Dovecot start; ignored once the host has mail"
        ),
    )


# systemd-journal-remote's port: its --listen-http default and systemd-journal-upload's when a URL names none.
JOURNAL_REMOTE_PORT = 19532


def _journal_upload_url(value: str) -> str:
    """http://<IPv4 address>[:port], written back with the port: where systemd-journal-upload sends
    (checks.py holds the address to the WireGuard network)."""
    parts = urlsplit(value)
    if parts.scheme != "http":
        raise ValueError(
            "give an http:// URL: WireGuard already encrypts and authenticates the tunnel, and https would need "
            "client certificates for systemd-journal-upload that SAMS does not issue"
        )
    try:
        address, port = IPv4Address(parts.hostname or ""), parts.port or JOURNAL_REMOTE_PORT
    except ValueError as exc:  # a name, or a port outside 0-65535
        raise ValueError(
            "give the collector's IPv4 address on the tunnel and optionally a port, as http://10.100.0.1:19532 "
            "(a name could resolve outside the tunnel)"
        ) from exc
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment or not port:
        raise ValueError("give only http://<address>:<port>: systemd-journal-upload adds its own path, /upload")
    return f"http://{address}:{port}"


JournalUploadUrl = Annotated[str, AfterValidator(_journal_upload_url)]


class MonitoringSettings(_Config):
    """Metrics and alerts (components/monitoring, docs/monitoring.md); every listener on the WireGuard address."""

    enabled: bool = False
    mode: Literal["host", "external"] = Field(
        default="host",
        description=(
            "host: Prometheus and Alertmanager run on the mail host; external: only node_exporter runs there, "
            "and the stack output `monitoring` holds a scrape config and rules file for your own Prometheus"
        ),
    )
    scrape_interval_seconds: int = Field(
        default=60, ge=15, le=300, description="how often Prometheus scrapes (each scrape costs CPU and samples)"
    )
    retention_time: Duration = Field(default=timedelta(days=15), description="Prometheus keeps samples this long")
    retention_size_mib: int = Field(
        default=256, ge=64, le=65536, description="and never more than this on disk (the oldest blocks go first)"
    )
    email_to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(
        default_factory=list,
        description=(
            "alert e-mail recipients; sent through sams:relay when one is set, else through the host's own Postfix "
            "on loopback (docs/monitoring.md). The Slack-compatible webhook is the secret sams:monitoringWebhookUrl"
        ),
    )
    queue_threshold: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        description="alert when more messages than this wait in Postfix's queue for one recipient domain (10 min)",
    )
    notify_interval_minutes: int = Field(
        default=5,
        ge=1,
        le=60,
        description=(
            "Alertmanager's group_interval: how soon a new alert joining an open outage is sent, "
            "and the all-clear once the last one is fixed"
        ),
    )
    login_messages_per_hour: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        description=(
            "alert when one login submits more messages than this within an hour (a stolen password): half "
            "of the default sending limit, so the alert comes before sams:limits refuses the login's mail"
        ),
    )
    blocklists: list[Annotated[str, Field(pattern=r"^([a-z0-9-]+\.)+[a-z]{2,}$", max_length=200)]] = Field(
        default_factory=lambda: ["zen.spamhaus.org", "bl.spamcop.net", "psbl.surriel.com"],
        description=(
            "DNS blocklists asked every minute, through the host's own resolver, whether they list the host's "
            "public address (the alert SamsBlocklisted); empty: none asked"
        ),
    )
    runbook_url: str = Field(
        default="docs/monitoring.md",
        pattern=r"^\S+$",
        description="where each alert's runbook link points (its anchor is appended), e.g. your copy of the docs",
    )
    journal_upload_url: JournalUploadUrl | None = Field(
        default=None,
        description=(
            "forward the host's whole journal to a systemd-journal-remote collector at this URL, an address in "
            "wireguard.network (the hub's: http://10.100.0.1:19532), so it travels over the tunnel only; "
            "unset: nothing is forwarded (docs/logs.md#forwarding-the-journal)"
        ),
    )


# ClamAV's own figures: its engine holds ~1.2 GiB of signatures, twice that for a moment while it
# reloads them after each update (concurrent reload, so scanning never stops); it asks for 3 GiB at least.
CLAMAV_MIN_MEMORY_GB = 3


class AntivirusSettings(_Config):
    """ClamAV, asked by Rspamd for every attachment; a virus is refused in the SMTP session (554)."""

    clamav: bool = Field(
        default=False,
        description=(
            f"scan attachments with ClamAV; off by default: its signatures need more memory than the rest of "
            f"the mail system (~1.2 GiB, twice that while reloading; at least {CLAMAV_MIN_MEMORY_GB} GiB of RAM). "
            "The first `up` downloads them; while clamd is down, mail is delivered unscanned (CLAMAV_FAIL)"
        ),
    )


WebmailExposure = Literal["vpn", "public"]


class WebmailSettings(_Config):
    """Roundcube webmail with password change, and Radicale for CalDAV/CardDAV, at https://<hostname>/
    (docs/webmail.md)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Roundcube webmail, where users read mail and change their own password (~25 MiB idle, ~40 "
            "while used; docs/webmail_choice.md)"
        ),
    )
    exposure: WebmailExposure = Field(
        default="vpn",
        description=(
            "vpn: https://<hostname>/ answers on the WireGuard address only; public: on the public address "
            "too (needs publicWeb), with a fail2ban jail on failed web logins, rate limits and HSTS"
        ),
    )
    calendars: bool = Field(
        default=True,
        description=(
            "CalDAV and CardDAV (Radicale, ~25 MiB) for phones and Thunderbird, under the same exposure "
            "(only with enabled)"
        ),
    )


class DatabaseSettings(_Config):
    image: str = "postgres:17-alpine"


SELECTOR_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class DkimRotation(_Config):
    """A key rotation from `selector` to `to`; components/keys/rotation.py turns it into phases."""

    to: str = Field(pattern=SELECTOR_PATTERN, description="the new selector; its key is made when the rotation starts")
    started: Instant = Field(
        description="when the new key is published: ISO date (midnight UTC) or date-time with zone; "
        "set it to the time of the `pulumi up` that starts the rotation, never to a past day"
    )
    switch_after: Duration = Field(
        default=timedelta(hours=48),
        description="after `started`, sign with the new key (e.g. 48h): the new record has reached resolvers",
    )
    withdraw_after: Duration = Field(
        default=timedelta(days=7),
        description="after `started`, remove the old key and record (e.g. 7d): its mail has been verified",
    )


class DkimSettings(_Config):
    selector: str = Field(
        default="s1", pattern=SELECTOR_PATTERN, description="the selector in use (the old one while a rotation runs)"
    )
    rotation: DkimRotation | None = Field(default=None, description="a rotation in progress (docs/runbooks)")


class DnsSettings(_Config):
    # `manual`: no Cloudflare records; the record table is exported for another DNS host.
    provider: Literal["cloudflare", "manual"] = "cloudflare"
    ttl: int = Field(default=300, ge=60, le=86400)


class ResolverSettings(_Config):
    """The host's own caching resolver (Unbound on loopback), which Rspamd asks.

    DNS blocklists refuse queries that reach them through large shared resolvers (a provider's),
    so a mail host resolves for itself: from the root, validating DNSSEC, unless told otherwise.
    """

    forwarders: list[IPv4Address] = Field(
        default_factory=list,
        description="send every query to these resolvers instead of resolving from the root (empty: from the root)",
    )
    dnssec: bool = Field(
        default=True, description="validate DNSSEC; off only where the zones above cannot be validated (the lab)"
    )
    reserved_zones: list[Literal["test", "home.arpa"]] = Field(
        default_factory=list,
        description=(
            "special-use names (RFC 6761) that Unbound answers NXDOMAIN for by itself, to ask the forwarders "
            "instead: only for a lab whose mail domains live there (the lab's .test domains), never in production"
        ),
    )


class VaultSettings(_Config):
    """Where the mailbox passwords live: KV v2 at <mount>/data/<prefix>/<domain>/<user>.

    The token is the secret `sams:vaultToken` (or VAULT_TOKEN); the address falls back to VAULT_ADDR.
    """

    address: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(/.*)?$", description="e.g. https://vault.example.org:8200"
    )
    mount: str = Field(default="secret", pattern=r"^[A-Za-z0-9_-]+$", description="the KV v2 mount")
    prefix: str = Field(
        default="mail/users",
        pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
        description="path under the mount; one secret per user below <prefix>/<domain>/<user>",
    )


# How new mailbox passwords are hashed (components/users/hashing.py has the trade-off).
PasswordScheme = Literal["SHA512-CRYPT", "ARGON2ID"]
DEFAULT_PASSWORD_SCHEME: PasswordScheme = "SHA512-CRYPT"


class UsersSettings(_Config):
    archive_days: int = Field(
        default=30, gt=0, description="days an offboarded user's archived Maildir is kept before it is purged"
    )
    password_scheme: PasswordScheme = Field(
        default=DEFAULT_PASSWORD_SCHEME,
        description=(
            "hash scheme of new passwords (first passwords and rotations; Dovecot keeps verifying older hashes "
            "by their own prefix): SHA512-CRYPT (~3-5 ms of CPU a login) or ARGON2ID (~250 ms and 64 MiB of "
            "memory a login); see components/users/hashing.py"
        ),
    )


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_CAA = "letsencrypt.org"  # the CAA issuer domain Let's Encrypt checks for


class AcmeSettings(_Config):
    """Certificates from an ACME CA through certbot (Let's Encrypt unless `directory` says otherwise)."""

    directory: str = Field(
        default=LETS_ENCRYPT, pattern=r"^https://\S+$", description="the ACME server's directory URL"
    )
    challenge: Literal["http-01", "dns-01-cloudflare"] = Field(
        default="http-01",
        description=(
            "http-01: a webroot nginx serves on port 80 (needs publicWeb); dns-01-cloudflare: TXT records "
            "made with the secret sams:acmeCloudflareToken (Zone.DNS:Edit on the mail zones)"
        ),
    )
    email: str | None = Field(
        default=None, pattern=r"^[^@\s]+@[^@\s]+$", description="ACME account contact (expiry notices)"
    )
    caa_issuers: list[DomainName] = Field(
        default_factory=lambda: [LETS_ENCRYPT_CAA],
        min_length=1,
        description="CA domains the CAA records allow to issue; must name the CA behind `directory`",
    )
    server_ca: str | None = Field(
        default=None,
        pattern=r"^-----BEGIN CERTIFICATE-----\n(.|\n)+-----END CERTIFICATE-----\n?$",
        description="PEM of an extra CA the host trusts for the ACME server's own HTTPS (a private ACME server)",
    )


class StackConfig(_Config):
    provider: Literal["vultr", "oci", "existing"] = Field(description="where the host runs; its section is required")
    hostname: DomainName = Field(description="the mail host's FQDN: MX target, HELO, PTR and TLS name")
    admin_user: str = Field(default="sams", pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="sudo user for SSH")
    admin_ssh_keys: list[SshPublicKey] = Field(min_length=1, description="OpenSSH public keys of the admins")
    vultr: VultrSettings | None = None
    oci: OciSettings | None = None
    existing: ExistingSettings | None = None
    wireguard: WireGuardSettings = Field(description="the admin tunnel every change rides")
    client_access: ClientAccess = Field(default_factory=ClientAccess)
    public_web: bool = Field(default=True, description="80/443 for ACME HTTP-01, MTA-STS and client autoconfiguration")
    acme: AcmeSettings = Field(default_factory=AcmeSettings)
    relay: RelaySettings | None = None
    dmarc: DmarcSettings = Field(default_factory=DmarcSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    antivirus: AntivirusSettings = Field(default_factory=AntivirusSettings)
    webmail: WebmailSettings = Field(default_factory=WebmailSettings)
    limits: LimitsSettings = Field(
        default_factory=LimitsSettings, description="sending limits on submission, outbound pacing (docs/limits.md)"
    )
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    dkim: DkimSettings = Field(default_factory=DkimSettings)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    resolver: ResolverSettings = Field(default_factory=ResolverSettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    users: UsersSettings = Field(default_factory=UsersSettings)
    mail_list: str | None = Field(default=None, description="defaults to stacks/<stack>/mail_list.yml")
    # Checks that span sections (provider section present, overlapping networks) live in
    # settings.checks so each problem names its own key.
