"""What journal forwarding installs and where (pure): one list the step, the lab and the tests read."""

from __future__ import annotations

# Debian 13's systemd-journal-remote 257: systemd-journal-upload (the host's end) and
# systemd-journal-remote (a collector's end) in one package; it enables and starts nothing itself.
PACKAGES: tuple[str, ...] = ("systemd-journal-remote",)
UNIT = "systemd-journal-upload"
# A drop-in beside the package's own journal-upload.conf (which stays the package's, untouched).
CONFIG = "/etc/systemd/journal-upload.conf.d/10-sams.conf"
DROPIN = f"/etc/systemd/system/{UNIT}.service.d/10-sams.conf"
