"""The journal forwarding step (pure): with `sams:monitoring.journalUploadUrl` set, Debian's
systemd-journal-upload sends the host's journal to a systemd-journal-remote collector on the
tunnel (docs/logs.md); unset (or monitoring off), the uploader stops and its files go.

One step: it replaces no package conffile (its settings are drop-ins), so the package can be
installed after its files are in place.
"""

from __future__ import annotations

from cloudinit import WG_INTERFACE
from components.journal.plan import CONFIG, DROPIN, PACKAGES, UNIT
from components.remote.packages import install_missing
from components.remote.steps import File, StepSpec, stop_units
from components.render import render
from settings import Settings

STEP = "journal-upload"


def upload_url(settings: Settings) -> str | None:
    """Where the journal goes; None when nothing is forwarded."""
    mon = settings.config.monitoring
    return mon.journal_upload_url if mon.enabled else None


def journal_step(settings: Settings) -> StepSpec:
    url = upload_url(settings)
    if url is None:
        return disabled_step()
    files = (
        File(CONFIG, render("journal", f"{CONFIG.lstrip('/')}.j2", url=url)),
        File(DROPIN, render("journal", f"{DROPIN.lstrip('/')}.j2", wg_interface=WG_INTERFACE)),
    )
    script = f"""\
changed() {{ printf '%s\\n' "$SAMS_CHANGED" | grep -qxF "$1"; }}
{install_missing(PACKAGES)}systemctl daemon-reload
systemctl enable -q {UNIT}.service
if changed {CONFIG} || changed {DROPIN}; then
    systemctl restart {UNIT}.service
else
    systemctl start {UNIT}.service
fi
"""
    return StepSpec(name=STEP, files=files, script=script, description=f"the journal forwarded to {url}")


def disabled_step() -> StepSpec:
    """Nothing forwarded: the uploader stopped and disabled; sams-apply removes the drop-ins it had
    (the package and the uploader's saved cursor stay)."""
    return StepSpec(name=STEP, script=stop_units(UNIT), description="the journal is not forwarded")


__all__ = ["disabled_step", "journal_step", "upload_url"]
