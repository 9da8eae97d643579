"""The webmail steps (pure): Roundcube's packages, then Roundcube on PHP-FPM behind nginx at
https://<hostname>/, and sams-passwd, the password change it hands users' changes to.

Exposure `vpn` binds nginx's server for the hostname to the WireGuard address; `public` to every
address, with HSTS and a fail2ban jail on Roundcube's failed logins (nginx's login rate limit
applies to both). With the webmail off the step stops PHP-FPM and sams-passwd; sams-apply removes
the files it wrote (Debian's own PHP pool comes back) and Roundcube's data stays.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.database.roles import PASSWORD_CHANGER
from components.database.schema import DB_NAME
from components.database.steps import CONTAINER as DB_CONTAINER
from components.firewall.policy import PASSWD_PORT
from components.hostpaths import WEBMAIL_DATA_DIR
from components.remote.packages import install_missing
from components.remote.steps import File, Service, StepSpec, stop_units
from components.render import render
from components.tls.certs import CLIENT_CIPHER_LIST, TLS_FULLCHAIN, TLS_KEY
from components.webmail import policy
from components.webmail.plan import (
    CLIENT_IP_PLUGIN,
    CLIENT_IP_PLUGIN_FILE,
    DEBCONF,
    DES_KEY_FILE,
    DOVECOT_AUTH_CLIENT,
    FAIL2BAN_FILTER,
    FAIL2BAN_JAIL,
    IMAP_SOURCE,
    NGINX_DROPIN,
    NGINX_INCLUDES,
    NGINX_SITE,
    NGINX_SITE_ENABLED,
    PACKAGES,
    PASSWD_CONFIG,
    PASSWD_TOOL,
    PASSWD_UNIT,
    PASSWD_UNIT_FILES,
    PASSWORD_PLUGIN_CONFIG,
    PHP_FPM_UNIT,
    PHP_POOL,
    PHP_SOCKET,
    PHP_VERSION,
    ROUNDCUBE_CONFIG,
    ROUNDCUBE_DB,
    ROUNDCUBE_ROOT,
    ROUNDCUBE_SCHEMA,
    SYSLOG_ID,
)
from settings import Settings

PASSWD_SOURCE = Path(__file__).resolve().parent / "files" / "sams-passwd.py"
CLIENT_IP_PLUGIN_SOURCE = Path(__file__).resolve().parent / CLIENT_IP_PLUGIN_FILE.lstrip("/")
# The policy module, installed as is beside the service (sams-passwd imports it from here).
POLICY_DIR = "/usr/local/lib/sams"
POLICY_MODULE = f"{POLICY_DIR}/sams_password_policy.py"

# Postfix's message_size_limit is Debian's 10 MiB (components/mail leaves it): the page refuses larger
# before the upload; the request body allows the message base64-encoded (4/3) plus the form.
MAX_MESSAGE_MIB = 10
MAX_BODY_MIB = 16
# nginx's limit on login POSTs per address: a guesser is slowed (fail2ban bans at 5 failures when
# public). Many people share one address (an office's NAT, the VPN hub): 10 a minute with a burst of 5
# turned away 4 of 10 people logging in at once from the lab's VPN peer (bench.webmail_sessions).
LOGIN_RATE = "30r/m"
LOGIN_BURST = 20
# PHP-FPM's ondemand children exit this long after their last request (PHP's default).
PHP_IDLE_TIMEOUT_S = 10


def _render(template: str, **context: object) -> str:
    return render("webmail", template, **context)


def listen_addresses(settings: Settings) -> tuple[str, ...]:
    """Where nginx serves https://<hostname>/: the WireGuard address only, or every address."""
    if settings.config.webmail.exposure == "public":
        return ("443", "[::]:443")
    return (f"{settings.config.wireguard.address}:443",)


def nginx_site(settings: Settings) -> str:
    web = settings.config.webmail
    return _render(
        "etc/nginx/sites-available/sams-webmail.j2",
        hostname=str(settings.config.hostname),
        exposure=web.exposure,
        calendars_note=web.calendars,
        listen=listen_addresses(settings),
        hsts=web.exposure == "public",
        login_rate=LOGIN_RATE,
        login_burst=LOGIN_BURST,
        tls_fullchain=TLS_FULLCHAIN,
        tls_key=TLS_KEY,
        client_ciphers=CLIENT_CIPHER_LIST,
        roundcube_root=ROUNDCUBE_ROOT,
        max_body_mib=MAX_BODY_MIB,
        php_socket=PHP_SOCKET,
        includes=NGINX_INCLUDES,
    )


def roundcube_config(settings: Settings) -> str:
    return _render(
        "etc/roundcube/config.inc.php.j2",
        hostname=str(settings.config.hostname),
        db_path=ROUNDCUBE_DB,
        des_key_file=DES_KEY_FILE,
        syslog_id=SYSLOG_ID,
        max_message_mib=MAX_MESSAGE_MIB,
        imap_source=IMAP_SOURCE,
        client_ip_plugin=CLIENT_IP_PLUGIN,
    )


def passwd_config(settings: Settings) -> dict[str, object]:
    """sams-passwd's config (/etc/sams/passwd.json)."""
    return {
        "dovecot_auth": DOVECOT_AUTH_CLIENT,
        "scheme": settings.config.users.password_scheme,
        "psql": ["docker", "exec", "-i", DB_CONTAINER, "psql", "-U", PASSWORD_CHANGER, "-d", DB_NAME],
        "policy_dir": POLICY_DIR,
    }


def packages_step(settings: Settings) -> StepSpec | None:
    """Roundcube and PHP-FPM, installed before the webmail step writes over their conffiles (so
    sams-apply keeps the packages' own versions to put back when the webmail goes off); None when off."""
    if not settings.config.webmail.enabled:
        return None
    return StepSpec(
        name="webmail-packages",
        script=install_missing(PACKAGES, debconf=DEBCONF),
        description="webmail's Debian packages (Roundcube, PHP-FPM)",
    )


def files(settings: Settings) -> tuple[File, ...]:
    from cloudinit import WG_INTERFACE  # here: cloudinit imports the firewall, which imports this module's plan

    public = settings.config.webmail.exposure == "public"
    socket_unit, service_unit = PASSWD_UNIT_FILES
    out = [
        # Readable by PHP-FPM's group: Roundcube reads its config as www-data.
        File(ROUNDCUBE_CONFIG, roundcube_config(settings), mode="0640", group="www-data"),
        File(
            PASSWORD_PLUGIN_CONFIG,
            _render("etc/roundcube/plugins/password/config.inc.php.j2", port=PASSWD_PORT, min_length=policy.MIN_LENGTH),
            mode="0640",
            group="www-data",
        ),
        File(
            PHP_POOL,
            _render(
                f"etc/php/{PHP_VERSION}/fpm/pool.d/www.conf.j2",
                php_socket=PHP_SOCKET,
                idle_timeout_s=PHP_IDLE_TIMEOUT_S,
                max_upload_mib=MAX_MESSAGE_MIB,
                max_body_mib=MAX_BODY_MIB,
            ),
        ),
        File(CLIENT_IP_PLUGIN_FILE, CLIENT_IP_PLUGIN_SOURCE.read_text()),
        File(NGINX_SITE, nginx_site(settings)),
        File(PASSWD_TOOL, PASSWD_SOURCE.read_text(), mode="0755"),
        File(POLICY_MODULE, (Path(__file__).resolve().parent / "policy.py").read_text()),
        File(PASSWD_CONFIG, json.dumps(passwd_config(settings), indent=1, sort_keys=True) + "\n", mode="0600"),
        File(socket_unit, _render("etc/systemd/system/sams-passwd.socket.j2", port=PASSWD_PORT)),
        File(service_unit, _render("etc/systemd/system/sams-passwd@.service.j2", tool=PASSWD_TOOL)),
    ]
    if public:
        out += [
            File(FAIL2BAN_FILTER, _render("etc/fail2ban/filter.d/sams-roundcube.conf.j2", syslog_id=SYSLOG_ID)),
            File(FAIL2BAN_JAIL, _render("etc/fail2ban/jail.d/sams-webmail.local.j2")),
        ]
    else:
        # nginx binds the WireGuard address: it starts after wg0 (monitoring's drop-in says the same).
        out.append(
            File(
                NGINX_DROPIN,
                render("monitoring", "etc/systemd/system/_unit_.service.d/10-sams.conf.j2", wg_interface=WG_INTERFACE),
            )
        )
    return tuple(out)


def webmail_step(settings: Settings) -> StepSpec:
    if not settings.config.webmail.enabled:
        return disabled_step()
    step_files = files(settings)
    script = f"""\
changed() {{ printf '%s\\n' "$SAMS_CHANGED" | grep -qxF "$1"; }}
# Roundcube's data, PHP-FPM's user's alone.
install -d -m 0755 "$(dirname {WEBMAIL_DATA_DIR})"
install -d -o www-data -g www-data -m 0700 {WEBMAIL_DATA_DIR}
# The session-encryption key, made once on the host.
if [ ! -s {DES_KEY_FILE} ]; then
    key=$(head -c 18 /dev/urandom | base64)
    install -m 0640 -g www-data /dev/null {DES_KEY_FILE}.new
    printf '%s\\n' "$key" >{DES_KEY_FILE}.new
    mv {DES_KEY_FILE}.new {DES_KEY_FILE}
fi
# Roundcube's tables: created on a new host, brought to the installed version after an upgrade.
if [ ! -s {ROUNDCUBE_DB} ]; then
    runuser -u www-data -- sh -c 'umask 027; sqlite3 {ROUNDCUBE_DB} <{ROUNDCUBE_SCHEMA}'
fi
runuser -u www-data -- /usr/share/roundcube/bin/updatedb.sh --package=roundcube \\
    --dir=/usr/share/roundcube/SQL >/dev/null
# The daemons' own checkers before anything restarts: PHP's syntax, PHP-FPM's pools, nginx.
php -l {ROUNDCUBE_CONFIG} >/dev/null
php -l {PASSWORD_PLUGIN_CONFIG} >/dev/null
php -l {CLIENT_IP_PLUGIN_FILE} >/dev/null
php-fpm{PHP_VERSION} -t 2>/dev/null || php-fpm{PHP_VERSION} -t
systemctl enable -q {PHP_FPM_UNIT}
if changed {PHP_POOL}; then
    systemctl restart {PHP_FPM_UNIT}
else
    systemctl start {PHP_FPM_UNIT}
fi
systemctl enable -q {PASSWD_UNIT}.socket
if changed {PASSWD_UNIT_FILES[0]}; then
    systemctl restart {PASSWD_UNIT}.socket
else
    systemctl start {PASSWD_UNIT}.socket
fi
install -d -m 0755 {NGINX_INCLUDES}
reload_nginx=0
if [ "$(readlink {NGINX_SITE_ENABLED} || true)" != "{NGINX_SITE}" ]; then
    ln -sfn {NGINX_SITE} {NGINX_SITE_ENABLED}
    reload_nginx=1
fi
for file in {NGINX_SITE} {NGINX_DROPIN}; do
    if changed "$file"; then reload_nginx=1; fi
done
nginx -t -q
systemctl enable -q nginx
if [ "$reload_nginx" = 1 ] || ! systemctl is-active -q nginx; then
    systemctl reload-or-restart nginx
fi
"""
    return StepSpec(
        name="webmail",
        files=step_files,
        services=(Service("fail2ban.service", (FAIL2BAN_JAIL, FAIL2BAN_FILTER), "reload"),),
        script=script,
        description=f"webmail ({settings.config.webmail.exposure}): Roundcube on PHP-FPM, password change",
    )


def disabled_step() -> StepSpec:
    """Webmail off: PHP-FPM and sams-passwd stopped, nginx's site unlinked, the session key the step
    made deleted (sams-apply removes the files; Debian's pool comes back; Roundcube's data and packages
    stay)."""
    script = (
        stop_units(PHP_FPM_UNIT)
        + f"""\
rm -f {DES_KEY_FILE}
rmdir "$(dirname {CLIENT_IP_PLUGIN_FILE})" 2>/dev/null || true
if [ -L {NGINX_SITE_ENABLED} ]; then
    rm -f {NGINX_SITE_ENABLED}
    if systemctl is-active -q nginx; then
        nginx -t -q
        systemctl reload nginx
    fi
fi
"""
    )
    return StepSpec(name="webmail", script=script, description="webmail off")


__all__ = ["disabled_step", "nginx_site", "packages_step", "passwd_config", "roundcube_config", "webmail_step"]
