"""SAMS: the Pulumi program. Wiring only: settings -> components (see settings/ and components/)."""

from pathlib import Path

import pulumi
from pulumi_command import remote

from cloudinit import BootSecrets, hub_peer, user_data
from components.backup import Backup, BackupArgs
from components.database import Database, DatabaseArgs
from components.dav import Dav, DavArgs
from components.dns import Dns, DnsArgs
from components.firewall.steps import firewall_step
from components.host import Host, HostArgs
from components.host.ready import READY
from components.journal import Journal, JournalArgs
from components.keys.resources import HostKeys
from components.keys.rotation import dkim_phase, now
from components.mail import Mail, MailArgs
from components.mail.clients import client_settings
from components.monitoring import Monitoring, MonitoringArgs
from components.monitoring.plan import ALERTMANAGER_PORT, NODE_EXPORTER_PORT, PROMETHEUS_PORT
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from components.tls import Tls, TlsArgs
from components.users import Users, UsersArgs
from components.webmail import Webmail, WebmailArgs
from settings import from_pulumi

# Raises one SettingsError naming file, key and value before any resource is registered.
settings = from_pulumi(Path(__file__).resolve().parent)
cfg = settings.config
secrets = pulumi.Config("sams")

# The run's one reading of the clock: keys, DNS and OpenDKIM all follow this DKIM rotation phase.
dkim = dkim_phase(cfg.dkim, now())
keys = HostKeys("keys", settings, dkim)
boot: pulumi.Output[str] = pulumi.Output.secret(
    pulumi.Output.all(keys.wireguard_private_key, keys.ssh_host_private_key, keys.ssh_host_public_key).apply(
        lambda k: user_data(cfg, BootSecrets(k[0], k[1], k[2]))
    )
)
host = Host("host", HostArgs(settings, boot))

ssh_key = secrets.get_secret("sshPrivateKey")  # unset: pulumi-command uses the SSH agent
bastion = cfg.wireguard.bastion
tunnel = Tunnel(
    host=str(cfg.wireguard.address),
    user=cfg.admin_user,
    host_key=keys.ssh_host_public_key,
    private_key=ssh_key,
    proxy=remote.ProxyConnectionArgs(host=bastion.host, user=bastion.user, port=bastion.port, private_key=ssh_key)
    if bastion
    else None,
    # In every step's triggers: a replaced host gets every step again.
    host_id=host.instance_id,
)
ready = RemoteStep("host-ready", RemoteStepArgs(READY, tunnel, after=(host,)))
# The port policy's nftables on a running host (cloud-init wrote it at first boot): later policy
# changes, such as monitoring's ports on the tunnel, reach the host before what listens there.
firewall = RemoteStep("firewall", RemoteStepArgs(firewall_step(settings), tunnel, after=(ready,)))
# Before the database: on a new host with sams:backup.restore the snapshot is back in place
# before PostgreSQL first starts and before Postfix and Dovecot exist.
backup = Backup("backup", BackupArgs(settings, tunnel, after=(firewall,)))
database = Database("database", DatabaseArgs(settings, tunnel, after=(backup,)))
mail = Mail(
    "mail",
    MailArgs(
        settings,
        tunnel,
        keys.dkim,
        database.passwords,
        relay_password=secrets.get_secret("relayPassword") if cfg.relay else None,
        after=(database,),
        dkim_published=keys.dkim_published,
        dkim_phase=dkim,
    ),
)
# Mailbox passwords in Vault, first-password hashes, offboarding (after the tables and Dovecot exist).
users = Users("users", UsersArgs(settings, tunnel, after=(mail,)))
dns = Dns(
    "dns",
    DnsArgs(
        settings,
        ipv4=host.public_ipv4,
        ipv6=host.public_ipv6,
        has_ipv6=host.has_ipv6,
        dkim_public={(d, k.selector): k.public_b64 for d, ks in keys.dkim_published.items() for k in ks},
        dkim=dkim,
    ),
)
# nginx and certbot once the daemons run on their bootstrap certificate and the names resolve
# (HTTP-01); the deploy hook switches Postfix, Dovecot and nginx to the ACME certificate.
tls = Tls(
    "tls",
    TlsArgs(
        settings,
        tunnel,
        cloudflare_token=secrets.get_secret("acmeCloudflareToken")
        if cfg.acme.challenge == "dns-01-cloudflare"
        else None,
        after=(mail, dns),
    ),
)

# Webmail once nginx serves the ACME certificate and the users have passwords (docs/webmail.md).
webmail = Webmail("webmail", WebmailArgs(settings, tunnel, after=(tls, users)))

# Last: it reads the backup's status record and the certificate the TLS steps installed.
monitoring = Monitoring(
    "monitoring",
    MonitoringArgs(
        settings,
        tunnel,
        webhook_url=secrets.get_secret("monitoringWebhookUrl"),
        heartbeat_url=secrets.get_secret("monitoringHeartbeatUrl"),
        relay_password=secrets.get_secret("relayPassword") if cfg.relay else None,
        rspamd_metrics_password=mail.rspamd_metrics_password,
        public_ipv4=host.public_ipv4,
        dkim_phase=dkim,
        after=(tls, users, webmail),
    ),
)

# CalDAV and CardDAV (sams:webmail.calendars): Radicale behind the webmail's nginx, its logins checked
# by the host's own Dovecot over TLS with the ACME certificate.
dav = Dav("dav", DavArgs(settings, tunnel, after=(tls, users, webmail)))

# The journal to the collector on the tunnel (sams:monitoring.journalUploadUrl); off, the uploader stops.
journal = Journal("journal", JournalArgs(settings, tunnel, after=(monitoring,)))

pulumi.export("publicIpv4", host.public_ipv4)
pulumi.export("publicIpv6", host.public_ipv6)
pulumi.export("wireguardAddress", str(cfg.wireguard.address))
pulumi.export("wireguardPublicKey", keys.wireguard_public_key)
pulumi.export("sshHostPublicKey", keys.ssh_host_public_key)
# Paste into the hub's wg-quick config, then `ssh sams@<wireguardAddress>` works.
pulumi.export(
    "hubPeerConfig",
    pulumi.Output.all(keys.wireguard_public_key, host.public_ipv4).apply(
        lambda v: hub_peer(cfg, public_key=v[0], public_ipv4=v[1])
    ),
)
pulumi.export("publicPorts", host.firewall.public_ports)
pulumi.export("dnsRecords", dns.output)
# Which DKIM selectors are published, which one signs, and when a rotation's next phase starts.
pulumi.export("dkimRotation", dkim.summary())
pulumi.export("clientSettings", client_settings(settings))
# Read by the policy pack (backups must be on in prod) and by status checks.
pulumi.export(
    "backup",
    {
        "enabled": cfg.backup.enabled,
        "repository": backup.repository,
        "schedule": cfg.backup.schedule,
        "keep": cfg.backup.keep.model_dump(),
        "forget": cfg.backup.forget,
        "restore": cfg.backup.restore,
        # SFTP repositories: the line for the backup server's authorized_keys.
        "sshPublicKey": backup.ssh_public_key,
    },
)
# Monitoring: where it listens on the tunnel, or (mode external) what the owner's Prometheus loads.
pulumi.export(
    "monitoring",
    {
        "enabled": cfg.monitoring.enabled,
        "mode": cfg.monitoring.mode,
        "nodeExporter": f"{cfg.wireguard.address}:{NODE_EXPORTER_PORT}" if cfg.monitoring.enabled else None,
        "prometheus": f"http://{cfg.wireguard.address}:{PROMETHEUS_PORT}/"
        if cfg.monitoring.enabled and cfg.monitoring.mode == "host"
        else None,
        "alertmanager": f"http://{cfg.wireguard.address}:{ALERTMANAGER_PORT}/"
        if cfg.monitoring.enabled and cfg.monitoring.mode == "host"
        else None,
        "external": monitoring.external,
    },
)
# For provider `existing`: feed this to the host as its cloud-init user-data (NoCloud, or your
# hoster's "user data" field). It carries private keys: `pulumi stack output --show-secrets`.
pulumi.export("hostUserData", boot)
