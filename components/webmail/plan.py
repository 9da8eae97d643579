"""What the webmail installs and where (pure): one list that the step, the firewall, the lab and the
tests read. Roundcube 1.6 on PHP-FPM 8.4 from Debian 13, behind the host's nginx (docs/webmail.md)."""

from __future__ import annotations

from components.hostpaths import WEBMAIL_DATA_DIR, WEBMAIL_NGINX_INCLUDES

# Roundcube with the SQLite driver (its own data: address books, identities, settings) and Debian's
# plugins (the password plugin); php8.4-fpm named so apt satisfies Roundcube's `php` with FPM, never
# Apache's module.
PHP_VERSION = "8.4"
PACKAGES: tuple[str, ...] = (f"php{PHP_VERSION}-fpm", "roundcube-core", "roundcube-sqlite3", "roundcube-plugins")
# dbconfig-common would otherwise make Roundcube's database its own way: SAMS writes the config.
DEBCONF: tuple[str, ...] = ("roundcube-core roundcube/dbconfig-install boolean false",)

PHP_FPM_UNIT = f"php{PHP_VERSION}-fpm"
# Debian's own pool file, replaced by SAMS's one pool for Roundcube (no resident children).
PHP_POOL = f"/etc/php/{PHP_VERSION}/fpm/pool.d/www.conf"
PHP_SOCKET = "/run/php/sams-webmail.sock"

ROUNDCUBE_CONFIG = "/etc/roundcube/config.inc.php"
# Roundcube's IMAP logins leave from this loopback address, which nothing else on the host uses, and
# carry the browser's address (IMAP ID x-originating-ip, before LOGIN; the plugin below). Dovecot
# trusts that forward from this address alone (login_trusted_networks), so its auth penalty and the
# sams-dovecot jail count a web guesser's failures against the guesser, not against every webmail
# user at once as one 127.0.0.1.
IMAP_SOURCE = "127.0.0.2"
CLIENT_IP_PLUGIN = "sams_client_ip"
CLIENT_IP_PLUGIN_FILE = f"/var/lib/roundcube/plugins/{CLIENT_IP_PLUGIN}/{CLIENT_IP_PLUGIN}.php"
PASSWORD_PLUGIN_CONFIG = "/etc/roundcube/plugins/password/config.inc.php"
# Roundcube's session-encryption key: made on the host once, never leaves it (a new one only logs
# everyone out).
DES_KEY_FILE = "/etc/roundcube/sams-des-key"
ROUNDCUBE_DB = f"{WEBMAIL_DATA_DIR}/roundcube.db"
ROUNDCUBE_SCHEMA = "/usr/share/roundcube/SQL/sqlite.initial.sql"
# Debian's document root (index.php, static files, the skins).
ROUNDCUBE_ROOT = "/var/lib/roundcube/public_html"
SYSLOG_ID = "roundcube"

NGINX_SITE = "/etc/nginx/sites-available/sams-webmail"
NGINX_SITE_ENABLED = "/etc/nginx/sites-enabled/sams-webmail"
NGINX_INCLUDES = WEBMAIL_NGINX_INCLUDES
# With exposure vpn nginx binds the WireGuard address: it starts after wg0.
NGINX_DROPIN = "/etc/systemd/system/nginx.service.d/10-sams-webmail.conf"

# The password service: Roundcube's password plugin speaks poppassd to it on loopback; it checks the
# current password with Dovecot, the new one against the policy, stores Dovecot's hash through a
# database role that can only call one function, and flushes that user from Dovecot's cache.
PASSWD_TOOL = "/usr/local/sbin/sams-passwd"
PASSWD_CONFIG = "/etc/sams/passwd.json"
PASSWD_UNIT = "sams-passwd"
PASSWD_UNIT_FILES = (f"/etc/systemd/system/{PASSWD_UNIT}.socket", f"/etc/systemd/system/{PASSWD_UNIT}@.service")
DOVECOT_AUTH_CLIENT = "/run/dovecot/auth-client"

FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/sams-webmail.local"
FAIL2BAN_FILTER = "/etc/fail2ban/filter.d/sams-roundcube.conf"
