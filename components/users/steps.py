"""The users step (pure): the host-side tool, its daily archive purge, and the command that feeds it.

`sams-users sync` runs after the database step has made the tables match the mail list: it sets
the first password hash of new mailboxes (only where none is set), clears the hash of users who
left the list, moves their Maildirs to /var/mail/archive/<domain>/<user>-<date> (their calendars and
contacts beside, <user>-<date>.dav; their Roundcube row renamed <address>#left-<date>) and purges
archives older than sams:users.archiveDays (a daily timer does that too).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from components.dav.plan import PRINCIPALS as DAV_PRINCIPALS
from components.hostpaths import VMAIL_ROOT
from components.remote.steps import File, StepSpec, apply_command
from components.render import render
from components.webmail.plan import ROUNDCUBE_DB
from settings import Settings

TOOL = "/usr/local/lib/sams/sams-users"
ARCHIVE_ROOT = "/var/mail/archive"
PURGE_UNIT = "sams-archive-purge"
TOOL_SOURCE = Path(__file__).resolve().parent / "files" / "sams-users.py"


def archive_path(address: str, date: str) -> str:
    local, _, domain = address.partition("@")
    return f"{ARCHIVE_ROOT}/{domain}/{local}-{date}"


def tool_args(settings: Settings) -> list[str]:
    return [
        "--vmail-root",
        VMAIL_ROOT,
        "--archive-root",
        ARCHIVE_ROOT,
        "--archive-days",
        str(settings.config.users.archive_days),
        # Always: calendars turned off keep their collections, which still leave with their user.
        "--dav-principals",
        DAV_PRINCIPALS,
        # Always, as above: Roundcube's database stays when the webmail is turned off.
        "--webmail-db",
        ROUNDCUBE_DB,
    ]


def users_step(settings: Settings) -> StepSpec:
    days = settings.config.users.archive_days
    ctx = {"days": days, "tool": TOOL, "archive_root": ARCHIVE_ROOT, "webmail_db": ROUNDCUBE_DB}
    return StepSpec(
        name="users",
        files=(
            File(TOOL, TOOL_SOURCE.read_text(), mode="0755"),
            File(
                f"/etc/systemd/system/{PURGE_UNIT}.service",
                render("users", f"etc/systemd/system/{PURGE_UNIT}.service.j2", **ctx),
            ),
            File(
                f"/etc/systemd/system/{PURGE_UNIT}.timer",
                render("users", f"etc/systemd/system/{PURGE_UNIT}.timer.j2", **ctx),
            ),
        ),
        script=(
            f"install -d -m 0700 {ARCHIVE_ROOT}\nsystemctl daemon-reload\nsystemctl enable --now {PURGE_UNIT}.timer\n"
        ),
        description="mailbox first passwords, offboarding archive and its daily purge",
    )


def sync_command(spec: StepSpec, settings: Settings) -> str:
    """Install the step, then run `sams-users sync` on the JSON (hashes, removed) arriving on stdin."""
    args = " ".join(shlex.quote(a) for a in tool_args(settings))
    return f"{apply_command(spec)} </dev/null && sudo -n /usr/bin/python3 {TOOL} sync {args}"
