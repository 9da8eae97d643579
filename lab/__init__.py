"""SAMS lab: a local Debian trixie "mail host" in systemd-nspawn, reached over WireGuard.

See ``lab/README.md``.  Public entry points: :func:`lab.up`, :func:`lab.down`,
:func:`lab.status`, :class:`lab.LabSpec`, :class:`lab.ssh.HostShell`.
"""
