"""What the DAV component installs and where (pure): Radicale 3.5 from Debian 13 for CalDAV and
CardDAV behind the webmail's nginx server (https://<hostname>/dav/), read by the step, the backup,
the DNS plan, the client profile and the tests."""

from __future__ import annotations

from components.hostpaths import DAV_COLLECTIONS as DAV_COLLECTIONS
from components.hostpaths import WEBMAIL_NGINX_INCLUDES
from settings.stack import StackConfig

PACKAGES: tuple[str, ...] = ("radicale",)
# Debian's unit (radicale.service) runs /usr/bin/radicale as user radicale, reading CONFIG, with
# ProtectSystem=strict and ReadWritePaths=/var/lib/radicale/ /var/cache/radicale/: it needs no
# drop-in. Its package does not hand the collections folder to that user: the step does.
UNIT = "radicale"
USER = "radicale"
CONFIG = "/etc/radicale/config"

# Radicale's filesystem storage keeps each user's collections in one folder under this one, named by
# the login (lower case): offboarding moves it to the archive (components/users).
PRINCIPALS = f"{DAV_COLLECTIONS}/collection-root"

# Loopback only: nginx is the one way in (TLS with the ACME certificate, the webmail's exposure).
LISTEN_HOST = "127.0.0.1"
LISTEN_PORT = 5232  # Radicale's own default port

# Where DAV lives in the webmail's https://<hostname>/ server, and nginx's file for it (inside
# that server block: components/webmail includes every *.conf in WEBMAIL_NGINX_INCLUDES).
URL_PATH = "/dav/"
SCRIPT_NAME = URL_PATH.rstrip("/")
NGINX_INCLUDE = f"{WEBMAIL_NGINX_INCLUDES}/dav.conf"
# The webmail server's port (nginx, HTTPS): what clients dial for DAV (SRV records, the profile).
HTTPS_PORT = 443
# RFC 6764 section 5: clients ask these first and follow the redirect to the DAV root.
WELL_KNOWN: tuple[str, ...] = ("/.well-known/caldav", "/.well-known/carddav")

# What each user finds at the first login (Radicale's predefined_collections): a calendar and an
# address book, because iOS can add calendars to a CalDAV account but no address book to a CardDAV one.
PREDEFINED_COLLECTIONS: dict[str, dict[str, str]] = {
    "calendar": {"tag": "VCALENDAR", "D:displayname": "Calendar", "C:supported-calendar-component-set": "VEVENT,VTODO"},
    "contacts": {"tag": "VADDRESSBOOK", "D:displayname": "Contacts"},
}

# Radicale checks each password with an IMAP LOGIN at the host's own Dovecot over implicit TLS.
IMAPS_PORT = 993

# Public exposure: a fail2ban jail on Radicale's failed logins, which name the client's address as
# nginx forwards it (X-Forwarded-For, set to $remote_addr).
FAIL2BAN_JAIL_NAME = "sams-radicale"
FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/sams-dav.local"
FAIL2BAN_FILTER = f"/etc/fail2ban/filter.d/{FAIL2BAN_JAIL_NAME}.conf"


def calendars_on(cfg: StackConfig) -> bool:
    """Radicale runs: webmail on with calendars (sams:webmail.calendars counts only with enabled)."""
    return cfg.webmail.enabled and cfg.webmail.calendars


def calendars_public(cfg: StackConfig) -> bool:
    """Phones on the internet may find and use it: the SRV records and the profile's DAV payloads."""
    return calendars_on(cfg) and cfg.webmail.exposure == "public"
