"""The mail daemons as remote steps (pure): settings in, StepSpec out, nothing touches a host.

One step per daemon, so a change to Postfix's files reloads Postfix and nothing else:

  mail_base_step  the vmail user, the bootstrap certificate, the milter socket directories
  opendkim_step   OpenDKIM: signing for every domain with the dkim-keys step's keys
  antivirus_step  ClamAV when sams:antivirus.clamav is on (its first signatures, clamd running); else off
  rspamd_step     Rspamd (milter, SPF/DKIM/DMARC/ARC checks) and its Redis
  dovecot_step    Dovecot 2.4: IMAP, POP3, LMTP, ManageSieve, SASL for Postfix, SQL users, quota
  postfix_step    Postfix: MX behind postscreen, submission 587/465, virtual domains from SQL

Apply them in that order: the base step creates what the daemons' configs point at (a Dovecot
reload with a missing certificate fails), and Postfix comes last because it talks to all three.
The packages themselves are installed before any of these run.

Templates live in components/mail/etc/ named after where they land; every secret is a late()
token that sams-apply replaces on the host, so no password is ever part of a rendered file here.
"""

from __future__ import annotations

from pathlib import Path

from components.database import schema
from components.database.steps import UNIT as DB_UNIT
from components.firewall.policy import DOVECOT_STATS_PORT, public_ports
from components.hostpaths import CLAMAV_DB_DIR, CLAMAV_DB_FORMS, CLAMD_SOCKET, VMAIL_ROOT, VMAIL_UID
from components.keys.rotation import DkimPhase, phase_without_clock
from components.mail import limits
from components.remote.packages import install_missing
from components.remote.steps import INSTALLED_FN, File, Service, StepSpec, late
from components.render import render
from components.tls import certs
from components.webmail.plan import IMAP_SOURCE as WEBMAIL_IMAP_SOURCE
from settings import Settings

# --- paths shared by the daemons (and by the tests) -------------------------------------------
# Stable paths: a bootstrap self-signed pair until certbot's certificate replaces it (components/tls).
TLS_DIR, TLS_FULLCHAIN, TLS_KEY = certs.TLS_DIR, certs.TLS_FULLCHAIN, certs.TLS_KEY

POSTFIX_SPOOL = "/var/spool/postfix"
# Relative to the spool: how Postfix's (chrooted) daemons name the sockets.
LMTP_SOCKET = "private/dovecot-lmtp"
# Concurrent LMTP deliveries: Postfix's limit for the socket and Dovecot's per-user limit, one number.
LMTP_CONCURRENCY = 20
# Dovecot's auth cache (dovecot.conf); the least recently used entries go first when it is full.
AUTH_CACHE_SIZE = "10M"
AUTH_SOCKET = "private/auth"
# Dovecot's CPU share when the cores are busy (etc/systemd/system/dovecot.service.d/sams-cpu.conf.j2):
# three times the others', as a cgroup weight (default 100) or, where the kernel groups by session
# instead, as that session's nice (-5 weighs 3121 against 1024 for nice 0).
DOVECOT_CPU_DROPIN = "/etc/systemd/system/dovecot.service.d/sams-cpu.conf"
DOVECOT_CPU_WEIGHT = 300
DOVECOT_AUTOGROUP_NICE = -5
# Dovecot's quota policy service: Postfix refuses mail for a full mailbox at RCPT time.
QUOTA_STATUS_SOCKET = "private/quota-status"
OPENDKIM_MILTER = "opendkim/opendkim.sock"
RSPAMD_MILTER = "rspamd/milter.sock"
PGSQL_DIR = "/etc/postfix/pgsql"
RELAY_PASSWORD_FILE = "/etc/postfix/relay_password"
# The host's own mailbox names that reach root, and through /etc/aliases the first domain's
# postmaster: RFC 2142's role names for the services a mail host runs, and the bounce sender.
HOST_ROLE_NAMES = ("postmaster", "abuse", "hostmaster", "webmaster", "security", "noc", "mailer-daemon")
UNATTENDED_UPGRADES_MAIL = "/etc/apt/apt.conf.d/52sams-mail"

VMAIL_USER = "vmail"
# A fixed id above Dovecot's first_valid_uid (500), so no extra setting is needed to allow it,
# and the same on every host (backups restore with the right owner).

DOVECOT_SQL_CONF = "/etc/dovecot/sql.conf.ext"

DKIM_KEY_DIR = "/etc/dkimkeys"  # written by the dkim-keys step (components/mail/__init__.py)
OPENDKIM_DIR = "/etc/opendkim"

RSPAMD_LOCAL = "/etc/rspamd"
# Outside local.d/override.d so Rspamd never includes it on its own; written by the step script.
RSPAMD_PASSWORD_INC = "sams/controller-password.inc"
RSPAMD_CONTROLLER = "127.0.0.1:11334"
# How long the rspamd step waits for a starting Rspamd to load its configuration (~25 s of CPU on a
# new host here) before it reloads it.
RSPAMD_READY_S = 180
# Rspamd's compiled Hyperscan databases (Debian's dbdir), and how long nothing may be written there
# before the rspamd step takes a compile as finished (7 s passed between two files on a new host).
RSPAMD_CACHE = "/var/lib/rspamd"
RSPAMD_CACHE_QUIET_S = 10
# Only databases written this soon after a start count as its compile: Rspamd rewrites some later
# (a forced re-apply minutes after the first found new files and restarted it again, 26 s), and the
# hour-long bench saw no private copies come back from those (Rspamd 114 MiB, 52 anonymous).
RSPAMD_COMPILE_WINDOW_S = 60
REDIS = "127.0.0.1:6379"
# The host's caching resolver (Unbound, loopback only), for Rspamd's DNS.
RESOLVER_ADDRESS = "127.0.0.1"
RESOLVER = f"{RESOLVER_ADDRESS}:53"
UNBOUND_CONF = "/etc/unbound/unbound.conf.d/sams.conf"
REDIS_MAXMEMORY = "256mb"
# Postfix's message_size_limit (main.cf): clamd takes streams this long, so any accepted part is scanned.
MESSAGE_SIZE_LIMIT = 52428800
# Below this much free space in its queue's filesystem Postfix's smtpd answers every MAIL FROM with
# "452 4.3.1 Insufficient system storage" (main.cf). Postfix's own floor is 1.5 x message_size_limit;
# twice leaves room to deliver what is already queued after the last message it took.
QUEUE_MINFREE = 2 * MESSAGE_SIZE_LIMIT
# sams-mail-space (a timer) mails the postmaster once per episode when the queue's or the Maildirs'
# filesystem has less than this share free (or less than twice QUEUE_MINFREE), before Postfix refuses.
MAIL_SPACE_TOOL = "/usr/local/sbin/sams-mail-space"
# fail2ban's ignorecommand: a failed login while PostgreSQL is down is no password guessing.
AUTH_UNAVAILABLE_TOOL = "/usr/local/sbin/sams-auth-unavailable"
# ... and for this long after the database is back: fail2ban may read an outage's lines later.
AUTH_UNAVAILABLE_GRACE_S = 20
# The saved log queries (docs/logs.md): auth failures, rejects, deliveries, senders.
LOGS_TOOL = "/usr/local/sbin/sams-logs"
LOGS_SOURCE = Path(__file__).resolve().parent / "usr" / "local" / "sbin" / "sams-logs.py"
DOVECOT_UNIT = "dovecot.service"
# Postfix's start waits for PostgreSQL and Dovecot (etc/systemd/system/postfix.service.d/sams-order.conf.j2).
POSTFIX_ORDER_DROPIN = "/etc/systemd/system/postfix.service.d/sams-order.conf"
MAIL_SPACE_UNIT = "sams-mail-space"
MAIL_SPACE_STATE = "/var/lib/sams/mail-space-low"
MAIL_SPACE_WARN_PERCENT = 10
MAIL_SPACE_INTERVAL = "5min"
MAIL_SPACE_SUBJECT = "Mail storage low"

# ClamAV (sams:antivirus.clamav): Debian's clamd, asked by Rspamd over systemd's socket for it.
CLAMAV_PACKAGES: tuple[str, ...] = ("clamav-daemon", "clamav-freshclam", "clamdscan")
CLAMD_CONF = "/etc/clamav/clamd.conf"
# Debian's clamav-daemon.socket and .service start only once these exist (their ConditionPathExistsGlob),
# each in one of the forms freshclam writes (CVD, its patched CLD, the older unpacked .inc directory).
CLAMAV_FIRST_DATABASES = ("main", "daily")
CLAMAV_UNITS = ("clamav-daemon.socket", "clamav-daemon.service", "clamav-freshclam.service")
# Debian 13's clamav-freshclam also enables a one-shot freshclam, at boot and daily: a second updater
# beside freshclam's daemon, which SAMS uses. Without ClamAV, or in reach of no mirror, it fails.
CLAMAV_ONESHOT_UNITS = ("clamav-freshclam-once.timer", "clamav-freshclam-once.service")
# Shell: `off UNIT...` disables and stops units and forgets that they failed: a stopped unit that had
# failed stays "failed" and leaves the host "degraded" (`systemctl is-system-running`).
UNITS_OFF_FN = """off() {
    for unit; do
        systemctl disable --now --quiet "$unit"
        if systemctl is-failed --quiet "$unit"; then systemctl reset-failed "$unit"; fi
    done
}"""
# Shell: the one-shot updater off, where the installed package has it.
ONESHOT_OFF = f"""for unit in {" ".join(CLAMAV_ONESHOT_UNITS)}; do
    if [ -e "/usr/lib/systemd/system/$unit" ]; then off "$unit"; fi
done"""
# How long the step waits for clamd to answer after its start: loading ClamAV's official signatures
# takes ~30-60 s; Debian's unit allows 420 s (TimeoutStartSec).
CLAMD_READY_S = 420

# fail2ban: the jails for the public logins, and SAMS's filters for Dovecot 2.4's and Postfix's failed logins.
FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/sams-mail.local"
FAIL2BAN_DOVECOT_FILTER = "/etc/fail2ban/filter.d/sams-dovecot.conf"
FAIL2BAN_POSTFIX_SASL_FILTER = "/etc/fail2ban/filter.d/sams-postfix-sasl.conf"
# The services (firewall/policy.py names) where a password is typed: SMTP AUTH, and Dovecot's logins.
SASL_SERVICES = frozenset({"submission", "submissions"})
LOGIN_SERVICES = SASL_SERVICES | {"imap", "imaps", "pop3s", "managesieve"}
# Postfix's units on Debian 13 (the package's postfix.service and its per-instance unit).
POSTFIX_UNITS = ("postfix.service", "postfix@-.service")


def postfix_sasl_journalmatch() -> str:
    """The postfix-sasl jail's journal match: Postfix's units and the identifiers of the smtpds that
    offer AUTH (each submission service in master.cf logs as postfix/<service>/smtpd: its
    syslog_name plus the program's name), every priority (the filter needs the session's info-level
    "disconnect" line as well as the warning that AUTH failed). Terms on one field are
    alternatives, terms on different fields all apply."""
    units = [f"_SYSTEMD_UNIT={unit}" for unit in POSTFIX_UNITS]
    idents = [f"SYSLOG_IDENTIFIER=postfix/{service}/smtpd" for service in sorted(SASL_SERVICES)]
    return " ".join([*units, *idents])


# Late values (arrive on stdin at apply time).
DB_POSTFIX_PASSWORD = schema.password_late_name("postfix")
DB_DOVECOT_PASSWORD = schema.password_late_name("dovecot")
RELAY_PASSWORD = "relay_password"
RSPAMD_CONTROLLER_PASSWORD = "rspamd_controller_password"
# Rspamd's read-only password (`password`; the controller password above is `enable_password`): what
# nginx sends for /metrics with sams:monitoring on (components/monitoring/daemons.py). It can read
# statistics and nothing more, so it may sit in a root-only nginx file; the admin's may not.
RSPAMD_METRICS_PASSWORD = "rspamd_metrics_password"


def _render(template: str, **context: object) -> str:
    return render("mail", template, **context)


def _domains(settings: Settings) -> list[str]:
    return [d.name for d in settings.mail.domains]


# --- base ------------------------------------------------------------------------------------------


def logs_tool() -> str:
    """sams-logs with the units whose journal it reads written in."""
    source = LOGS_SOURCE.read_text()
    empty = "UNITS: tuple[str, ...] = ()"
    assert empty in source, "sams-logs.py lost its UNITS line"
    return source.replace(empty, f"UNITS: tuple[str, ...] = {(*POSTFIX_UNITS, DOVECOT_UNIT)!r}", 1)


def mail_base_step(settings: Settings) -> StepSpec:
    """What the daemons' configs point at: vmail, the certificate, the milter socket directories.

    The bootstrap certificate is made only when none exists, so certbot's (the tls-certbot step)
    replaces it for good and a re-run never undoes that.
    """
    script = f"""\
# The one system user that owns every Maildir.
getent group {VMAIL_USER} >/dev/null || groupadd --system --gid {VMAIL_UID} {VMAIL_USER}
getent passwd {VMAIL_USER} >/dev/null || useradd --system --uid {VMAIL_UID} --gid {VMAIL_USER} \\
    --home-dir {VMAIL_ROOT} --no-create-home --shell /usr/sbin/nologin {VMAIL_USER}
install -d -o {VMAIL_USER} -g {VMAIL_USER} -m 0750 {VMAIL_ROOT}

{certs.bootstrap_script(settings)}
# Milter sockets live in Postfix's spool (its chrooted daemons see nothing else). setgid
# directories owned by group postfix: the sockets inherit the group, so Postfix's processes
# (which keep only their primary group) can connect.
install -d -o opendkim -g postfix -m 2750 {POSTFIX_SPOOL}/{OPENDKIM_MILTER.split("/")[0]}
install -d -o _rspamd -g postfix -m 2750 {POSTFIX_SPOOL}/{RSPAMD_MILTER.split("/")[0]}
# Dovecot's LMTP, auth and quota-status sockets for Postfix go into its private/ (Postfix's own
# owner and mode): on a new host Postfix has not run yet to make it when Dovecot first starts.
install -d -o postfix -g root -m 0700 {POSTFIX_SPOOL}/{AUTH_SOCKET.split("/")[0]}
"""

    def reachable(services: frozenset[str]) -> str:
        """The public ports (the port policy's) of these services: only those can be guessed at."""
        return ",".join(str(p.number) for p in public_ports(settings.config) if p.service in services)

    jail = _render(
        "etc/fail2ban/jail.d/sams-mail.local.j2",
        submission_ports=reachable(SASL_SERVICES),
        login_ports=reachable(LOGIN_SERVICES),
        ignorecommand=AUTH_UNAVAILABLE_TOOL,
    )
    unavailable = _render(
        "usr/local/sbin/sams-auth-unavailable.j2",
        db_host=schema.DB_HOST,
        db_port=schema.DB_PORT,
        db_unit=DB_UNIT,
        grace_s=AUTH_UNAVAILABLE_GRACE_S,
    )
    files = (
        File(LOGS_TOOL, logs_tool(), mode="0755"),
        File(AUTH_UNAVAILABLE_TOOL, unavailable, mode="0755"),
        File(FAIL2BAN_JAIL, jail),
        File(FAIL2BAN_DOVECOT_FILTER, _render("etc/fail2ban/filter.d/sams-dovecot.conf.j2")),
        File(
            FAIL2BAN_POSTFIX_SASL_FILTER,
            _render("etc/fail2ban/filter.d/sams-postfix-sasl.conf.j2", journalmatch=postfix_sasl_journalmatch()),
        ),
    )
    return StepSpec(
        name="mail-base",
        files=files,
        services=(
            Service(
                "fail2ban.service",
                tuple(f.path for f in files if f.path not in (LOGS_TOOL, AUTH_UNAVAILABLE_TOOL)),
                "reload",
            ),
        ),
        script=script,
        description="vmail user, bootstrap certificate, milter socket directories, fail2ban jails, sams-logs",
    )


# --- Postfix ---------------------------------------------------------------------------------------


def _pgsql_lookup(name: str, purpose: str) -> File:
    return File(
        f"{PGSQL_DIR}/{name}.cf",
        _render(
            "etc/postfix/pgsql/lookup.cf.j2",
            purpose=purpose,
            db_host=schema.DB_HOST,
            db_port=schema.DB_PORT,
            db_name=schema.DB_NAME,
            db_user="postfix",
            db_password=late(DB_POSTFIX_PASSWORD),
            query=schema.POSTFIX_QUERIES[name],
        ),
        # proxymap opens the tables as the postfix user; nobody else may read the password.
        mode="0640",
        owner="root",
        group="postfix",
    )


def postfix_step(settings: Settings) -> StepSpec:
    """main.cf, master.cf, the SQL lookup tables, /etc/aliases and (optionally) the relay login."""
    cfg = settings.config
    relay = cfg.relay
    first_domain = settings.mail.domains[0].name
    warmup = limits.warmup_context(settings)
    files = [
        File(
            "/etc/postfix/main.cf",
            _render(
                "etc/postfix/main.cf.j2",
                hostname=cfg.hostname,
                pgsql_dir=PGSQL_DIR,
                lmtp_socket=LMTP_SOCKET,
                lmtp_concurrency=LMTP_CONCURRENCY,
                auth_socket=AUTH_SOCKET,
                quota_status_socket=QUOTA_STATUS_SOCKET,
                tls_fullchain=TLS_FULLCHAIN,
                tls_key=TLS_KEY,
                client_ciphers=certs.CLIENT_CIPHER_LIST,
                rspamd_milter=RSPAMD_MILTER,
                opendkim_milter=OPENDKIM_MILTER,
                message_size_limit=MESSAGE_SIZE_LIMIT,
                queue_minfree=QUEUE_MINFREE,
                relay=relay,
                relay_password_file=RELAY_PASSWORD_FILE,
                **warmup,
            ),
        ),
        File(
            "/etc/postfix/master.cf",
            _render("etc/postfix/master.cf.j2", quota_status_socket=QUOTA_STATUS_SOCKET, **warmup),
        ),
        _pgsql_lookup("virtual_mailbox_domains", "the mail domains"),
        _pgsql_lookup("virtual_mailbox_maps", "the mailboxes"),
        _pgsql_lookup("virtual_alias_maps", "the aliases"),
        _pgsql_lookup("sender_login_maps", "who may send as which address"),
        # Mail to root (cron, daemons) and to the host's role names reaches the first domain's postmaster.
        File(
            "/etc/aliases",
            _render("etc/aliases.j2", role_names=HOST_ROLE_NAMES, root_to=f"postmaster@{first_domain}"),
        ),
        # unattended-upgrades reports a failed upgrade to root (it mails nothing unless told to).
        File(UNATTENDED_UPGRADES_MAIL, _render("etc/apt/apt.conf.d/52sams-mail.j2")),
        *mail_space_files(settings),
        File(
            POSTFIX_ORDER_DROPIN,
            _render(
                "etc/systemd/system/postfix.service.d/sams-order.conf.j2",
                database_unit=DB_UNIT,
                dovecot_unit=DOVECOT_UNIT,
            ),
        ),
    ]
    late_values = [DB_POSTFIX_PASSWORD]
    if relay is not None and relay.username:
        files.append(
            File(
                RELAY_PASSWORD_FILE,
                _render("etc/postfix/relay_password.j2", relay=relay, password=late(RELAY_PASSWORD)),
                mode="0600",
            )
        )
        late_values.append(RELAY_PASSWORD)
    if warmup["warmup"]:
        files.append(File(limits.WARMUP_TRANSPORT_MAP, limits.warmup_transport_map(settings)))
    # Outbound pacing off: its transport table goes with the main.cf lines that named it.
    unused = "" if warmup["warmup"] else f"rm -f {limits.WARMUP_TRANSPORT_MAP}\n"
    script = (
        unused
        + f"""\
# /etc/aliases is read through its indexed copy.
case "$SAMS_CHANGED" in *"/etc/aliases"*) newaliases ;; esac
[ -e /etc/aliases.db ] || newaliases
postfix check
case "$SAMS_CHANGED" in *{MAIL_SPACE_UNIT}*|*{POSTFIX_ORDER_DROPIN}*) systemctl daemon-reload ;; esac
systemctl enable --quiet --now {MAIL_SPACE_UNIT}.timer
"""
    )
    return StepSpec(
        name="postfix",
        files=tuple(files),
        # Reload a running Postfix; start it on a new host (the packages step started nothing).
        services=(Service("postfix", ("/etc/postfix/*",), "reload-or-restart"),),
        script=script,
        late_values=tuple(late_values),
        description="Postfix: MX with postscreen, submission 587/465, SQL lookups, milters",
    )


def mail_space_files(settings: Settings) -> tuple[File, ...]:
    """sams-mail-space, its service and its timer: the postmaster hears of a filling disk."""
    hostname = settings.config.hostname
    tool = _render(
        "usr/local/sbin/sams-mail-space.j2",
        state_file=MAIL_SPACE_STATE,
        warn_percent=MAIL_SPACE_WARN_PERCENT,
        watched=[POSTFIX_SPOOL, VMAIL_ROOT],
        hostname=hostname,
        postmaster=f"postmaster@{settings.mail.domains[0].name}",
        subject=MAIL_SPACE_SUBJECT,
    )
    unit = f"/etc/systemd/system/{MAIL_SPACE_UNIT}"
    return (
        File(MAIL_SPACE_TOOL, tool, mode="0755"),
        File(f"{unit}.service", _render(f"etc/systemd/system/{MAIL_SPACE_UNIT}.service.j2", tool=MAIL_SPACE_TOOL)),
        File(
            f"{unit}.timer",
            _render(f"etc/systemd/system/{MAIL_SPACE_UNIT}.timer.j2", interval=MAIL_SPACE_INTERVAL),
        ),
    )


# --- Dovecot ---------------------------------------------------------------------------------------


def dovecot_autogroup_write(pid: str) -> str:
    """Shell that gives the session of process `pid` Dovecot's nice; fails where autogroups are off."""
    return f'echo {DOVECOT_AUTOGROUP_NICE} > "/proc/{pid}/autogroup"'


# Dovecot's metric blocks with sams:monitoring on: name -> event filter. Each is exported as
# dovecot_<name>_total (events) and dovecot_<name>_duration_seconds_total.
DOVECOT_METRICS: dict[str, str] = {
    # Every password check (IMAP, POP3, ManageSieve, Postfix's SMTP AUTH): the ones that failed are a
    # guessing campaign or a client with an old password.
    "auth_successes": "event=auth_request_finished AND success=yes",
    "auth_failures": "event=auth_request_finished AND NOT success=yes",
    # Each message LMTP stored in a mailbox.
    "mail_deliveries": "event=mail_delivery_finished",
}


def dovecot_step(settings: Settings) -> StepSpec:
    """dovecot.conf (owned whole: Debian's conf.d is not included), the SQL connection and
    Dovecot's CPU share (a systemd drop-in)."""
    files = (
        File(
            "/etc/dovecot/dovecot.conf",
            _render(
                "etc/dovecot/dovecot.conf.j2",
                tls_fullchain=TLS_FULLCHAIN,
                tls_key=TLS_KEY,
                client_ciphers=certs.CLIENT_CIPHER_LIST,
                sql_conf=DOVECOT_SQL_CONF,
                vmail_user=VMAIL_USER,
                vmail_root=VMAIL_ROOT,
                postfix_spool=POSTFIX_SPOOL,
                lmtp_socket=LMTP_SOCKET,
                lmtp_concurrency=LMTP_CONCURRENCY,
                auth_socket=AUTH_SOCKET,
                auth_cache_size=AUTH_CACHE_SIZE,
                trusted_networks=f"{WEBMAIL_IMAP_SOURCE}/32" if settings.config.webmail.enabled else "",
                quota_status_socket=QUOTA_STATUS_SOCKET,
                # Counted only when something reads them (components/monitoring/daemons.py).
                metrics=DOVECOT_METRICS if settings.config.monitoring.enabled else {},
                stats_port=DOVECOT_STATS_PORT,
            ),
        ),
        File(
            DOVECOT_SQL_CONF,
            _render(
                "etc/dovecot/sql.conf.ext.j2",
                db_host=schema.DB_HOST,
                db_port=schema.DB_PORT,
                db_name=schema.DB_NAME,
                db_user="dovecot",
                db_password=late(DB_DOVECOT_PASSWORD),
                passdb_query=schema.DOVECOT_PASSDB_QUERY,
                userdb_query=schema.DOVECOT_USERDB_QUERY,
                iterate_query=schema.DOVECOT_ITERATE_QUERY,
            ),
            # Read by Dovecot's config process, which runs as root.
            mode="0600",
        ),
        File(
            DOVECOT_CPU_DROPIN,
            _render(
                "etc/systemd/system/dovecot.service.d/sams-cpu.conf.j2",
                cpu_weight=DOVECOT_CPU_WEIGHT,
                autogroup_nice=DOVECOT_AUTOGROUP_NICE,
                autogroup_write=dovecot_autogroup_write("$MAINPID"),
            ),
        ),
    )
    # The share applies to the running Dovecot too, without a restart that would drop every IMAP
    # session: daemon-reload sets the weight, and the session's nice is set as ExecStartPost does.
    share = f"""\
case "$SAMS_CHANGED" in *{DOVECOT_CPU_DROPIN}*)
    systemctl daemon-reload
    pid=$(systemctl show -p MainPID --value dovecot)
    if [ "${{pid:-0}}" -gt 0 ]; then {{ {dovecot_autogroup_write("$pid")}; }} 2>/dev/null || true; fi ;;
esac
"""
    return StepSpec(
        name="dovecot",
        files=files,
        # Reload a running Dovecot; start it on a new host (the packages step started nothing).
        services=(Service("dovecot", ("/etc/dovecot/*",), "reload-or-restart"),),
        # Fails the step (and names the setting) if Dovecot does not accept the configuration.
        script="doveconf -n >/dev/null\n" + share,
        late_values=(DB_DOVECOT_PASSWORD,),
        description="Dovecot 2.4: IMAP, POP3, LMTP, ManageSieve, SQL users, quota",
    )


# --- OpenDKIM --------------------------------------------------------------------------------------


def dkim_key_path(domain: str, selector: str) -> str:
    return f"{DKIM_KEY_DIR}/{domain}/{selector}.private"


def opendkim_step(settings: Settings, dkim: DkimPhase | None = None) -> StepSpec:
    """opendkim.conf and its tables: one key per domain, the phase's signing selector.

    `dkim` is the rotation phase (components/keys/rotation.py); required when a rotation is set.
    The key files of every published selector are the dkim-keys step's; this step's script removes
    the ones no longer published, after OpenDKIM has reloaded tables that no longer name them.
    """
    cfg = settings.config
    phase = dkim or phase_without_clock(cfg.dkim)
    selector = phase.signing
    domains = _domains(settings)
    key_table = f"{OPENDKIM_DIR}/key.table"
    signing_table = f"{OPENDKIM_DIR}/signing.table"
    trusted_hosts = f"{OPENDKIM_DIR}/trusted.hosts"
    files = (
        File(
            "/etc/opendkim.conf",
            _render(
                "etc/opendkim.conf.j2",
                postfix_spool=POSTFIX_SPOOL,
                opendkim_milter=OPENDKIM_MILTER,
                key_table=key_table,
                signing_table=signing_table,
                trusted_hosts=trusted_hosts,
            ),
        ),
        File(
            key_table,
            _render("etc/opendkim/key.table.j2", domains=domains, selector=selector, key_dir=DKIM_KEY_DIR),
        ),
        File(signing_table, _render("etc/opendkim/signing.table.j2", domains=domains)),
        File(trusted_hosts, _render("etc/opendkim/trusted.hosts.j2", hostname=cfg.hostname)),
    )
    keep = "|".join(dkim_key_path(d, s) for d in domains for s in phase.published)
    script = f"""\
opendkim -n
# Keys of selectors no longer published (a finished rotation, a removed domain). The tables that
# named them were installed and OpenDKIM reloaded before this script runs.
for key in {DKIM_KEY_DIR}/*/*.private; do
    case "$key" in
        {keep}) ;;
        *) if [ -e "$key" ]; then rm -f -- "$key"; echo "removed withdrawn DKIM key $key"; fi ;;
    esac
done
"""
    return StepSpec(
        name="opendkim",
        files=files,
        services=(
            # Socket and user are read only at start; the tables are re-read on reload (SIGUSR1).
            Service("opendkim", ("/etc/opendkim.conf",), "restart"),
            Service("opendkim", (f"{OPENDKIM_DIR}/*",), "reload"),
        ),
        script=script,
        description="OpenDKIM: DKIM signing for every mail domain",
    )


# Shell: `installed PKG` succeeds when Debian has PKG installed (the packages and antivirus steps).


# --- ClamAV ---------------------------------------------------------------------------------------


def antivirus_step(settings: Settings) -> StepSpec:
    """ClamAV on (clamd.conf, the first signatures, clamd answering) or off (its units stopped).

    It runs before the Rspamd step, so Rspamd is told to ask clamd only once clamd answers, and is
    told to stop asking (Rspamd's reload) just after clamd stops: then a message is delivered
    unscanned (CLAMAV_FAIL), never lost.
    """
    if not settings.config.antivirus.clamav:
        script = f"""\
# ClamAV is off: stop and disable what an earlier setting (or the packages' postinst) started. The
# packages and their signatures stay, so turning it on again downloads nothing twice.
{INSTALLED_FN}
{UNITS_OFF_FN}
if installed clamav-daemon; then off {" ".join(CLAMAV_UNITS[:2])}; fi
if installed clamav-freshclam; then
    off {CLAMAV_UNITS[2]}
    {ONESHOT_OFF.replace(chr(10), chr(10) + "    ")}
fi
"""
        return StepSpec(name="antivirus", script=script, description="ClamAV: off")
    have = " && ".join(f"have {db}" for db in CLAMAV_FIRST_DATABASES)
    script = f"""\
# Debian's postinst would rewrite clamd.conf from debconf at each upgrade: SAMS owns the file.
echo "clamav-daemon clamav-daemon/debconf boolean false" | debconf-set-selections
have() {{
    for f in {" ".join(f'{CLAMAV_DB_DIR}/"$1".{form}' for form in CLAMAV_DB_FORMS)}; do
        [ -e "$f" ] && return 0
    done
    return 1
}}
# freshclam's daemon updates the signatures; the one-shot updater would race it (and the download below).
{UNITS_OFF_FN}
{ONESHOT_OFF}
# Debian's units start clamd only once freshclam has these, and nothing starts it after freshclam's
# first download: fetch them now, so that `up` ends with clamd scanning, or fails saying why.
if ! {{ {have}; }}; then
    systemctl stop clamav-freshclam.service
    if ! out=$(freshclam --foreground --stdout 2>&1); then
        printf '%s\\n' "$out" >&2
        # freshclam's own daemon keeps trying; the next `up` finds what it fetched.
        systemctl start clamav-freshclam.service
        echo "ClamAV's first signature download failed (above): pulumi up again later, or clamav off" >&2
        exit 1
    fi
fi
systemctl enable --now --quiet {" ".join(CLAMAV_UNITS)}
# clamd answers once its signatures are loaded; Rspamd's step comes after this one.
if ! clamdscan --config-file={CLAMD_CONF} --ping {CLAMD_READY_S // 5}:5 >/dev/null; then
    echo "clamd did not answer on {CLAMD_SOCKET} within {CLAMD_READY_S} s: journalctl -u clamav-daemon" >&2
    exit 1
fi
"""
    conf = File(
        CLAMD_CONF,
        _render(
            "etc/clamav/clamd.conf.j2",
            socket=CLAMD_SOCKET,
            db_dir=CLAMAV_DB_DIR,
            stream_max=MESSAGE_SIZE_LIMIT,
        ),
    )
    return StepSpec(
        name="antivirus",
        files=(conf,),
        # clamd reads clamd.conf only at start. Until the first signatures exist, Debian's start
        # conditions make this restart a no-op, and the script starts clamd once they do.
        services=(Service("clamav-daemon.service", (CLAMD_CONF,), "restart"),),
        script=script,
        description="ClamAV: clamd with freshclam's signatures, for Rspamd",
    )


# --- Rspamd + Redis --------------------------------------------------------------------------------


def rspamd_step(settings: Settings) -> StepSpec:
    """Rspamd's local.d/override.d files, its controller password (hashed on the host), Redis."""

    def rspamd_file(rel: str, **context: object) -> File:
        return File(f"{RSPAMD_LOCAL}/{rel}", _render(f"etc/rspamd/{rel}.j2", **context))

    files = (
        rspamd_file(
            "override.d/worker-proxy.inc",
            postfix_spool=POSTFIX_SPOOL,
            rspamd_milter=RSPAMD_MILTER,
        ),
        rspamd_file(
            "override.d/worker-controller.inc", controller=RSPAMD_CONTROLLER, password_file=RSPAMD_PASSWORD_INC
        ),
        rspamd_file("override.d/worker-normal.inc"),
        rspamd_file("local.d/redis.conf", redis=REDIS),
        rspamd_file("local.d/options.inc", resolver=RESOLVER),
        File(
            UNBOUND_CONF,
            _render(
                "etc/unbound/unbound.conf.d/sams.conf.j2",
                address=RESOLVER_ADDRESS,
                forwarders=[str(a) for a in settings.config.resolver.forwarders],
                dnssec=settings.config.resolver.dnssec,
                reserved_zones=settings.config.resolver.reserved_zones,
            ),
        ),
        rspamd_file("local.d/greylist.conf"),
        rspamd_file("local.d/dkim_signing.conf"),
        rspamd_file("local.d/arc.conf"),
        rspamd_file(
            "local.d/antivirus.conf",
            clamav=settings.config.antivirus.clamav,
            clamd_socket=CLAMD_SOCKET,
            max_size=MESSAGE_SIZE_LIMIT,
        ),
        rspamd_file("local.d/milter_headers.conf"),
        rspamd_file("local.d/neural.conf"),
        rspamd_file("local.d/logging.inc"),
        rspamd_file("local.d/ratelimit.conf", **limits.ratelimit_context(settings)),
        *(
            (rspamd_file(limits.EXEMPT_RCPTS_MAP.removeprefix(f"{RSPAMD_LOCAL}/")),)
            if settings.config.limits.enabled
            else ()
        ),
        # Who may claim a SAMS address in From: (submission) or a hosted domain (port 25).
        rspamd_file("rspamd.local.lua", domains=_domains(settings)),
        File(
            "/etc/redis/redis.conf",
            _render("etc/redis/redis.conf.j2", maxmemory=REDIS_MAXMEMORY),
            mode="0640",
            owner="redis",
            group="redis",
        ),
    )
    password_file = f"{RSPAMD_LOCAL}/{RSPAMD_PASSWORD_INC}"
    # Sending limits off: their map goes too (ratelimit.conf then only says `enabled = false`).
    unused = "" if settings.config.limits.enabled else f"rm -f {limits.EXEMPT_RCPTS_MAP}\n"
    # rspamadm pw has no stdin mode: the password is on its command line for the few milliseconds
    # it runs (root-only host). The hash is salted, so it changes on every run: the step only runs
    # when its files or late values change, and then one reload picks it up.
    script = f"""\
{unused}install -d -o root -g _rspamd -m 0750 {RSPAMD_LOCAL}/sams
hash=$(rspamadm pw -q -p "$SAMS_LATE_{RSPAMD_CONTROLLER_PASSWORD}")
read_hash=$(rspamadm pw -q -p "$SAMS_LATE_{RSPAMD_METRICS_PASSWORD}")
umask 027
printf 'password = "%s";\\nenable_password = "%s";\\n' "$read_hash" "$hash" > {password_file}.new
chgrp _rspamd {password_file}.new
mv {password_file}.new {password_file}
# Debian's unit copies the DNSSEC root anchor into place when Unbound starts; do it first so the
# check below sees a complete configuration wherever Unbound has not started yet.
/usr/libexec/unbound-helper root_trust_anchor_update >/dev/null
unbound-checkconf >/dev/null
# configtest passes a ratelimit rule whose selector or bucket Rspamd cannot parse (it only logs that,
# and drops the limit): fail the step instead.
check=$(rspamadm configtest 2>&1) || {{ printf '%s\n' "$check" >&2; exit 1; }}
case "$check" in *"bad ratelimit"*|*"cannot parse bucket"*) printf '%s\n' "$check" >&2; exit 1 ;; esac
# A stopped Rspamd reads all this when it starts. A reload while it still loads its configuration
# (started moments ago by this step's restart, or on a new host) makes its main process exit and
# systemd restart it: wait until the controller answers /ping (it forks once that load is done).
rspamd_ready() {{
  tries=0
  until curl -fsS --max-time 2 -o /dev/null http://{RSPAMD_CONTROLLER}/ping; do
    tries=$((tries + 1))
    if [ "$tries" -ge {RSPAMD_READY_S} ]; then
      echo "rspamd: its controller did not answer in {RSPAMD_READY_S} s" >&2
      exit 1
    fi
    sleep 1
  done
}}
# Rspamd compiles its Hyperscan databases when it starts and finds none for its rules (a new host,
# a new version, new rules), and each of its processes may then keep its own copy until it
# restarts: ~60 MiB each, ~170 MiB in all on a new host here. A start that finds them compiled maps
# the files, shared by all (~15 MiB each). So once a start is {RSPAMD_CACHE_QUIET_S} s old (its
# first databases are written within a second or two), a Rspamd that wrote databases in the
# {RSPAMD_COMPILE_WINDOW_S} s after its start restarts once nothing has been written for
# {RSPAMD_CACHE_QUIET_S} s. (A compile that pauses longer is finished by the next start.)
rspamd_started() {{
  date -d "$(systemctl show -P ExecMainStartTimestamp rspamd)" +%s
}}
rspamd_compiled_since_start() {{
  started=$(rspamd_started)
  while [ $(($(date +%s) - started)) -lt {RSPAMD_CACHE_QUIET_S} ]; do sleep 1; done
  since=$((started + 1))  # the start time has whole seconds
  until=$((started + {RSPAMD_COMPILE_WINDOW_S}))
  [ -n "$(find {RSPAMD_CACHE} -maxdepth 1 \\( -name '*.hs' -o -name '*.hsmp' \\) -newermt "@$since" \\
    ! -newermt "@$until" -print -quit)" ]
}}
rspamd_cache_busy() {{
  since=$(($(date +%s) - {RSPAMD_CACHE_QUIET_S}))
  [ -n "$(find {RSPAMD_CACHE} -maxdepth 1 -name '*.hs*' -newermt "@$since" -print -quit)" ]
}}
if systemctl is-active --quiet rspamd; then
  rspamd_ready
  if rspamd_compiled_since_start; then
    waited=0
    while rspamd_cache_busy && [ "$waited" -lt {RSPAMD_READY_S} ]; do
      waited=$((waited + 1))
      sleep 1
    done
    systemctl restart rspamd
    rspamd_ready
  else
    systemctl reload rspamd
  fi
fi
"""
    return StepSpec(
        name="rspamd",
        files=files,
        services=(
            Service("unbound", (UNBOUND_CONF,), "restart"),
            # Listening sockets are bound at start: worker changes restart, the rest reloads.
            Service("rspamd", (f"{RSPAMD_LOCAL}/override.d/worker-*",), "restart"),
            Service("rspamd", (f"{RSPAMD_LOCAL}/local.d/*", f"{RSPAMD_LOCAL}/rspamd.local.lua"), "reload"),
            Service("redis-server", ("/etc/redis/redis.conf",), "restart"),
        ),
        script=script,
        late_values=(RSPAMD_CONTROLLER_PASSWORD, RSPAMD_METRICS_PASSWORD),
        description="Rspamd milter (spam, SPF/DKIM/DMARC/ARC), its Redis and its resolver (Unbound)",
    )


# Debian 13 packages of the mail stack (the lab bakes the same list into its tree).
MAIL_PACKAGES: tuple[str, ...] = (
    "postfix",
    "postfix-pgsql",
    "dovecot-imapd",
    "dovecot-pop3d",
    "dovecot-lmtpd",
    "dovecot-pgsql",
    "dovecot-sieve",
    "dovecot-managesieved",
    "opendkim",
    "opendkim-tools",
    "rspamd",
    "redis-server",
    "unbound",
    "openssl",
    # nginx and certbot: the ACME certificate and the MTA-STS policy host (components/tls).
    *certs.TLS_PACKAGES,
)


# Postfix's SMTP client logs in to a relay (sams:relay.username) through Cyrus SASL, whose PLAIN and
# LOGIN mechanisms Debian ships in libsasl2-modules, only a Recommends of Postfix. Without it every
# relayed message waits in the queue: "SASL authentication failed; ...: no mechanism available".
RELAY_SASL_PACKAGES: tuple[str, ...] = ("libsasl2-modules",)


def mail_packages(settings: Settings) -> tuple[str, ...]:
    """The stack's Debian packages: the mail stack's, SASL's for a relay login, ClamAV's where it is on."""
    cfg = settings.config
    return (
        *MAIL_PACKAGES,
        *(RELAY_SASL_PACKAGES if cfg.relay is not None and cfg.relay.username else ()),
        *(CLAMAV_PACKAGES if cfg.antivirus.clamav else ()),
    )


def mail_packages_step(settings: Settings) -> StepSpec:
    """Install what is missing (nothing on a host whose image already has it)."""
    # Postfix asks how to configure itself: the postfix step writes main.cf instead.
    script = install_missing(
        mail_packages(settings), debconf=("postfix postfix/main_mailer_type select No configuration",)
    )
    script += """\
# Timers start no daemon: certbot's renewals must run from now on, not from the next boot.
if systemctl list-unit-files -q certbot.timer >/dev/null 2>&1; then
    systemctl start certbot.timer
fi
"""
    return StepSpec(name="mail-packages", script=script, description="the mail stack's Debian packages")


def mail_steps(settings: Settings, dkim: DkimPhase | None = None) -> tuple[StepSpec, ...]:
    """Every mail step after the packages and DKIM keys, in the order they must be applied.

    `dkim`: the DKIM rotation phase (components/keys/rotation.py), required when one is set.
    """
    return (
        mail_base_step(settings),
        opendkim_step(settings, dkim),
        antivirus_step(settings),
        rspamd_step(settings),
        dovecot_step(settings),
        postfix_step(settings),
    )
