"""Where things live on the mail host, read by every component, the doctor and the tools: one copy
of each path, socket and id that more than one of them needs."""

# The virtual mail user that owns every Maildir; Dovecot delivers as it.
VMAIL_UID = 5000
VMAIL_ROOT = "/var/mail/vmail"

# ClamAV (optional, sams:antivirus.clamav): clamd's socket and its signature databases.
CLAMD_SOCKET = "/run/clamav/clamd.ctl"  # clamav-daemon.socket's ListenStream
CLAMAV_DB_DIR = "/var/lib/clamav"
# Each database comes in one of the forms freshclam writes (CVD, its patched CLD, the older unpacked
# .inc directory).
CLAMAV_DB_FORMS = ("cvd", "cld", "inc")

# Webmail and calendars (sams:webmail; components/webmail, components/dav): Roundcube's own database
# (address books, identities, settings: SQLite, written by PHP-FPM's user) and Radicale's collections
# (Debian's default folder) are user data the program cannot render again, so backups carry both.
WEBMAIL_DATA_DIR = "/var/lib/sams/webmail"
DAV_COLLECTIONS = "/var/lib/radicale/collections"
# nginx's server for https://<hostname>/ (components/webmail) includes every *.conf here inside it:
# the DAV component puts its /dav/ and /.well-known/ locations in one.
WEBMAIL_NGINX_INCLUDES = "/etc/nginx/sams-webmail.d"
