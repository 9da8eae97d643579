"""The DAV steps (pure): Debian's Radicale package, then its configuration and nginx's /dav/
locations inside the webmail's https://<hostname>/ server (components/webmail).

With calendars off (or webmail off) the step stops Radicale; sams-apply takes back the files the
step wrote (Debian's own /etc/radicale/config returns), and nginx forgets /dav/. The collections
stay: they are the users' calendars and address books.
"""

from __future__ import annotations

import json

from components.dav.plan import (
    CONFIG,
    DAV_COLLECTIONS,
    FAIL2BAN_FILTER,
    FAIL2BAN_JAIL,
    FAIL2BAN_JAIL_NAME,
    IMAPS_PORT,
    LISTEN_HOST,
    LISTEN_PORT,
    NGINX_INCLUDE,
    PACKAGES,
    PREDEFINED_COLLECTIONS,
    SCRIPT_NAME,
    UNIT,
    URL_PATH,
    USER,
    WELL_KNOWN,
    calendars_on,
    calendars_public,
)
from components.remote.packages import install_missing
from components.remote.steps import File, Service, StepSpec, stop_units
from components.render import render
from settings import Settings


def _context(settings: Settings) -> dict[str, object]:
    host = str(settings.config.hostname)
    return {
        "hostname": host,
        "listen": f"{LISTEN_HOST}:{LISTEN_PORT}",
        "imap_host": f"{host}:{IMAPS_PORT}",
        "collections": DAV_COLLECTIONS,
        "url_path": URL_PATH,
        "script_name": SCRIPT_NAME,
        "well_known": WELL_KNOWN,
        "predefined": json.dumps(PREDEFINED_COLLECTIONS),
    }


def radicale_config(settings: Settings) -> str:
    return render("dav", "etc/radicale/config.j2", **_context(settings))


def nginx_include(settings: Settings) -> str:
    return render("dav", f"{NGINX_INCLUDE.lstrip('/')}.j2", **_context(settings))


def packages_step(settings: Settings) -> StepSpec | None:
    """Debian's radicale, installed (not started) before the dav step writes over its conffile, so
    sams-apply keeps Debian's version to put back when calendars go off; None when off."""
    if not calendars_on(settings.config):
        return None
    return StepSpec(name="dav-packages", script=install_missing(PACKAGES), description="Radicale from Debian")


# Radicale's own checker first (it loads the configuration and the storage, then exits), then the
# unit; nginx checks its configuration and reloads only when /dav/'s file changed.
SCRIPT = f"""\
changed() {{ printf '%s\\n' "$SAMS_CHANGED" | grep -qxF "$1"; }}
# Debian's package leaves the folder root's: Radicale writes the collections as its own user. A
# restore (restic keeps numeric ids, and runs before this package exists on a new host) may bring
# them back under another id: they are handed back too.
install -d -o {USER} -g {USER} -m 0750 {DAV_COLLECTIONS}
find {DAV_COLLECTIONS} \\( ! -user {USER} -o ! -group {USER} \\) -exec chown -h {USER}:{USER} {{}} +
runuser -u {USER} -- radicale --config {CONFIG} --verify-storage >/dev/null
systemctl enable -q {UNIT}.service
if changed {CONFIG}; then
    systemctl restart {UNIT}.service
else
    systemctl start {UNIT}.service
fi
nginx -t -q
if changed {NGINX_INCLUDE} && systemctl is-active -q nginx; then
    systemctl reload nginx
fi
"""

# Radicale stopped and disabled if its package is there; nginx forgets /dav/ (sams-apply removed
# the file) when it runs.
DISABLED_SCRIPT = (
    """\
changed() { printf '%s\\n' "$SAMS_CHANGED" | grep -qxF "$1"; }
"""
    + stop_units(UNIT)
    + f"""\
if changed {NGINX_INCLUDE} && systemctl is-active -q nginx; then
    nginx -t -q
    systemctl reload nginx
fi
"""
)


# The jail comes and goes with public exposure (and with calendars): fail2ban reloads when its files change.
FAIL2BAN_RELOAD = Service("fail2ban.service", (FAIL2BAN_JAIL, FAIL2BAN_FILTER), "reload")


def fail2ban_files() -> tuple[File, ...]:
    """The jail on Radicale's failed logins and its filter (public exposure only: over the tunnel
    nobody is banned)."""
    return (
        File(FAIL2BAN_FILTER, render("dav", "etc/fail2ban/filter.d/sams-radicale.conf.j2", unit=UNIT)),
        File(FAIL2BAN_JAIL, render("dav", "etc/fail2ban/jail.d/sams-dav.local.j2", jail=FAIL2BAN_JAIL_NAME)),
    )


def dav_step(settings: Settings) -> StepSpec:
    if not calendars_on(settings.config):
        return StepSpec(
            name="dav",
            script=DISABLED_SCRIPT,
            services=(FAIL2BAN_RELOAD,),
            description="calendars off: Radicale stopped",
        )
    return StepSpec(
        name="dav",
        files=(
            # Radicale's user reads it; it holds no secret (the passwords are Dovecot's).
            File(CONFIG, radicale_config(settings)),
            File(NGINX_INCLUDE, nginx_include(settings)),
            *(fail2ban_files() if calendars_public(settings.config) else ()),
        ),
        services=(FAIL2BAN_RELOAD,),
        script=SCRIPT,
        description=f"Radicale (CalDAV, CardDAV) at https://{settings.config.hostname}{URL_PATH}",
    )


__all__ = ["dav_step", "nginx_include", "packages_step", "radicale_config"]
