"""The backup step (pure): restic, the host tool, its config and secrets, the nightly timer.

It runs before the database step, so that on a new host with `sams:backup.restore` set the
snapshot is back in place (Maildirs, certificates, the WAL archive, PostgreSQL's base backup set
up for recovery) before PostgreSQL first starts and before Postfix and Dovecot exist.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.backup.plan import (
    BACKUP_PACKAGES,
    CA_FILE,
    CACHE_DIR,
    CONFIG_FILE,
    COPY_ENV_FILE,
    COPY_UNIT,
    DATA_UNITS,
    ENV_FILE,
    EXCLUDES,
    KNOWN_HOSTS_FILE,
    PASSWORD,
    PASSWORD_FILE,
    REPOSITORY,
    RESTORED_MARKER,
    SFTP_FILES,
    SFTP_PACKAGES,
    SNAPSHOT_PATHS,
    SSH_CONFIG_FILE,
    SSH_KEY,
    SSH_KEY_FILE,
    STAGING_DIR,
    STATUS_FILE,
    TOOL,
    UNIT,
    copy_credential_env,
    credential_env,
    known_hosts,
    uses_sftp,
)
from components.database.roles import SUPERUSER
from components.database.steps import CONTAINER, DATA_DIR, PG_UID, WAL_ARCHIVE
from components.database.steps import UNIT as POSTGRES_UNIT
from components.hostpaths import VMAIL_ROOT, VMAIL_UID
from components.remote.packages import install_missing
from components.remote.steps import File, StepSpec, late
from components.render import render
from settings import Settings
from settings.times import format_duration

TOOL_SOURCE = Path(__file__).resolve().parent / "files" / "sams-backup.py"
# A first backup of a large store over a slow uplink takes hours; a stuck run must still end.
RUN_TIMEOUT = "6h"


def tool_config(settings: Settings) -> dict[str, object]:
    """What the host tool reads (config.json): no secret in it."""
    backup = settings.config.backup
    return {
        "repository": late(REPOSITORY),
        "hostname": str(settings.config.hostname),
        "env_file": ENV_FILE,
        "password_file": PASSWORD_FILE,
        "cacert": CA_FILE if backup.server_ca else None,
        "ssh_config": SSH_CONFIG_FILE if uses_sftp(settings) else None,
        "cache_dir": CACHE_DIR,
        "staging_dir": STAGING_DIR,
        "status_file": STATUS_FILE,
        "restored_marker": RESTORED_MARKER,
        "paths": list(SNAPSHOT_PATHS),
        "excludes": list(EXCLUDES),
        "keep": backup.keep.model_dump(),
        "forget": backup.forget,
        "read_data_subset": backup.read_data_subset,
        "read_data_on": backup.read_data_on,
        "postgres": {
            "container": CONTAINER,
            "superuser": SUPERUSER,
            "data_dir": DATA_DIR,
            "wal_archive": WAL_ARCHIVE,
            "unit": POSTGRES_UNIT,
            "uid": PG_UID,
        },
        "vmail": {"root": VMAIL_ROOT, "uid": VMAIL_UID, "maildir": "Maildir"},
        "mail_units": ["postfix.service", "dovecot.service"],
        "data_units": list(DATA_UNITS),
        "copy": {"repository": backup.copy_to.repository, "env_file": COPY_ENV_FILE} if backup.copy_to else None,
    }


def backup_step(settings: Settings) -> StepSpec:
    backup = settings.config.backup
    if not backup.enabled:
        return disabled_step()
    ctx = {
        "tool": TOOL,
        "postgres_unit": POSTGRES_UNIT,
        "timeout": RUN_TIMEOUT,
        "schedule": backup.schedule,
        "randomized_delay": format_duration(backup.randomized_delay),
        "unit": UNIT,
        "copy_schedule": backup.copy_to.schedule if backup.copy_to else "",
    }
    env = credential_env(settings)
    copy_env = copy_credential_env(settings)
    files = [
        File(TOOL, TOOL_SOURCE.read_text(), mode="0755"),
        # Root-only: the repository URL arrives as a late value (a created bucket's name and endpoint).
        File(CONFIG_FILE, json.dumps(tool_config(settings), indent=1, sort_keys=True) + "\n", mode="0600"),
        File(PASSWORD_FILE, late(PASSWORD), mode="0600"),
        File(ENV_FILE, "".join(f"{var}={late(name)}\n" for var, name in env.items()), mode="0600"),
        File(f"/etc/systemd/system/{UNIT}.service", render("backup", f"etc/systemd/system/{UNIT}.service.j2", **ctx)),
        File(f"/etc/systemd/system/{UNIT}.timer", render("backup", f"etc/systemd/system/{UNIT}.timer.j2", **ctx)),
    ]
    if backup.server_ca:
        files.append(File(CA_FILE, backup.server_ca.rstrip("\n") + "\n"))
    sftp = uses_sftp(settings)
    if sftp:
        paths = {"ssh_config": SSH_CONFIG_FILE, "ssh_key": SSH_KEY_FILE, "known_hosts": KNOWN_HOSTS_FILE}
        files += [
            File(SSH_KEY_FILE, late(SSH_KEY), mode="0600"),
            File(KNOWN_HOSTS_FILE, known_hosts(settings)),
            File(SSH_CONFIG_FILE, render("backup", "etc/sams/backup/ssh_config.j2", **paths)),
        ]
        no_sftp = ""
    else:
        # An SFTP repository given up: its key and pins go with it.
        no_sftp = f"rm -f {' '.join(SFTP_FILES)}\n"
    if backup.copy_to:
        files += [
            File(COPY_ENV_FILE, "".join(f"{var}={late(name)}\n" for var, name in copy_env.items()), mode="0600"),
            *(
                File(
                    f"/etc/systemd/system/{COPY_UNIT}.{kind}",
                    render("backup", f"etc/systemd/system/{COPY_UNIT}.{kind}.j2", **ctx),
                )
                for kind in ("service", "timer")
            ),
        ]
        copy_timer = f"systemctl enable --now {COPY_UNIT}.timer\n"
    else:
        copy_timer = _remove_timer(COPY_UNIT) + f"rm -f {COPY_ENV_FILE}\n"
    restore = ""
    if backup.restore:
        # Only on a host that has never had mail: an existing host's data is never replaced by `up`.
        restore = f"/usr/bin/python3 {TOOL} restore-host --if-new --snapshot {backup.restore}\n"
    packages = (*BACKUP_PACKAGES, *(SFTP_PACKAGES if sftp else ()))
    script = f"""\
{install_missing(packages)}install -d -m 0700 {CACHE_DIR} {STAGING_DIR}
{no_sftp}{restore}systemctl daemon-reload
systemctl enable --now {UNIT}.timer
{copy_timer}"""
    return StepSpec(
        name="backup",
        files=tuple(files),
        script=script,
        late_values=(PASSWORD, REPOSITORY, *env.values(), *copy_env.values(), *((SSH_KEY,) if sftp else ())),
        description="encrypted restic snapshots off the host, nightly",
    )


def _remove_timer(unit: str) -> str:
    return f"""\
if [ -e /etc/systemd/system/{unit}.timer ]; then
    systemctl disable --now {unit}.timer
    rm -f /etc/systemd/system/{unit}.timer /etc/systemd/system/{unit}.service
    systemctl daemon-reload
fi
"""


def disabled_step() -> StepSpec:
    """Backups off: stop the timers an earlier setting started and remove the secrets it left behind
    (the repository itself and its snapshots are not touched)."""
    leftovers = " ".join((PASSWORD_FILE, ENV_FILE, COPY_ENV_FILE, CONFIG_FILE, CA_FILE, *SFTP_FILES, TOOL))
    script = _remove_timer(UNIT) + _remove_timer(COPY_UNIT) + f"rm -f {leftovers}\n"
    return StepSpec(name="backup", script=script, description="backups off")


__all__ = ["backup_step", "disabled_step", "tool_config"]
