"""SAMS lab: a local Debian trixie "mail host" in systemd-nspawn, reached over WireGuard.

See ``lab/README.md``.  Public entry points: :func:`up`, :func:`down`,
:func:`status`, :class:`LabSpec`, :class:`lab.ssh.HostShell`.
"""

from lab.control import UpReport, down, status, up
from lab.spec import LabSpec

__all__ = ["LabSpec", "UpReport", "down", "status", "up"]
