"""What a snapshot holds and where it goes (pure): one list that the host tool, the docs and the tests read.

Left out on purpose (docs/backup.md says what each costs): the Postfix queue (mail in flight is
retried by its senders, but a message accepted and not yet delivered when the disk is lost is
lost), everything the program renders again from the stack and its state (configs, DKIM keys,
the database roles' passwords), the packages, the logs, and Rspamd's state in Redis (learned
statistics, greylisting, rate counters: relearned; and its files belong to a user whose id a new
host's packages may number differently).
"""

from __future__ import annotations

import re

from components.database.steps import WAL_ARCHIVE
from components.mail.services import VMAIL_ROOT
from components.users.steps import ARCHIVE_ROOT
from settings import Settings

# Debian 13's restic (0.18): --stdin-from-command, restore --delete, exit codes 10 and 12.
BACKUP_PACKAGES: tuple[str, ...] = ("restic",)
UNIT = "sams-backup"
COPY_UNIT = "sams-backup-copy"  # restic copy to sams:backup.copyTo, on its own timer
TOOL = "/usr/local/sbin/sams-backup"
CONF_DIR = "/etc/sams/backup"
CONFIG_FILE = f"{CONF_DIR}/config.json"
ENV_FILE = f"{CONF_DIR}/env"  # the repository's credentials, root-only
COPY_ENV_FILE = f"{CONF_DIR}/copy-env"  # the second copy's, root-only
PASSWORD_FILE = f"{CONF_DIR}/password"  # the repository password, root-only
CA_FILE = f"{CONF_DIR}/ca.pem"
CACHE_DIR = "/var/cache/sams-backup"  # restic's index cache: a run reads the repository's index once
# Restores unpack here before moving into place: on /var like the data, so the move is a rename.
STAGING_DIR = "/var/lib/sams/backup/staging"
# The last run's record (time, snapshots, bytes added, duration, result): the doctor and monitoring read it.
STATUS_FILE = "/var/lib/sams/backup/status.json"
# Written once a new host has been restored: `up` never restores over it again.
RESTORED_MARKER = "/var/lib/sams/backup/restored.json"

# What the program cannot render again: the mail (Sieve scripts live in each user's home beside
# the Maildir), offboarded users' archives, the archived WAL (PostgreSQL itself travels as a base
# backup in a snapshot of its own), the ACME account and certificates (a rebuilt host would
# otherwise ask for new ones and can meet the CA's rate limits).
SNAPSHOT_PATHS: tuple[str, ...] = (VMAIL_ROOT, ARCHIVE_ROOT, WAL_ARCHIVE, "/etc/letsencrypt")
# A Maildir's tmp/ holds only deliveries in progress: never a message that got its 250.
EXCLUDES: tuple[str, ...] = (f"{VMAIL_ROOT}/*/*/Maildir/tmp/*", f"{VMAIL_ROOT}/*/*/Maildir/.*/tmp/*")

# Late value names (stdin): the repository password and the storage credential's two halves.
PASSWORD = "backup_password"
KEY_ID = "backup_key_id"
KEY_SECRET = "backup_key_secret"
REGION = "backup_region"  # an S3 endpoint's signing region (OCI's must be the tenancy's home region)
COPY_REPOSITORY = "backup_copy_repository"
COPY_KEY_ID = "backup_copy_key_id"
COPY_KEY_SECRET = "backup_copy_key_secret"
# restic's environment variables for each backend's credential.
CREDENTIAL_ENV = {
    "rest": ("RESTIC_REST_USERNAME", "RESTIC_REST_PASSWORD"),
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
}


# The repository URL travels as a late value too: where the program creates the bucket it is known
# only once the bucket exists.
REPOSITORY = "backup_repository"


def backend(settings: Settings) -> str:
    """restic's backend for the repository: the configured URL's scheme, s3 for a program-created bucket."""
    url = settings.config.backup.repository
    return "s3" if url is None else url.split(":", 1)[0]


def redact(url: str) -> str:
    """A repository URL fit for logs and status records: no user or password in it."""
    return re.sub(r"//[^/@]+@", "//", url)


def credential_env(settings: Settings) -> dict[str, str]:
    """restic variable -> late value name, for the repository's backend."""
    kind = backend(settings)
    user, secret = CREDENTIAL_ENV[kind]
    # restic signs S3 requests for this region (empty: its default, which most endpoints accept).
    return {user: KEY_ID, secret: KEY_SECRET, **({"AWS_DEFAULT_REGION": REGION} if kind == "s3" else {})}


def copy_credential_env(settings: Settings) -> dict[str, str]:
    """The same for the second copy (sams:backup.copyTo), whose credential has its own secrets."""
    copy = settings.config.backup.copy_to
    if copy is None:
        return {}
    user, secret = CREDENTIAL_ENV[copy.repository.split(":", 1)[0]]
    return {user: COPY_KEY_ID, secret: COPY_KEY_SECRET}
