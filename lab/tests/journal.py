"""Read what the lab's journal gained during a test: from a cursor, never from a whole-second --since,
which also returns the previous test's lines when both fall in the same second."""

from __future__ import annotations

import re

from lab.ssh import HostShell


def _journalctl(shell: HostShell, args: str) -> str:
    return shell.run(["sudo", "-n", "sh", "-c", f"journalctl --no-pager {args}"]).stdout.decode()


def cursor(shell: HostShell) -> str:
    """The cursor of the journal's newest entry, whatever its unit."""
    out = _journalctl(shell, "-n 1 -o cat --show-cursor")
    found = re.findall(r"^-- cursor: (\S+)$", out, re.M)
    assert found, f"journalctl printed no cursor:\n{out}"
    return found[-1]


def since(shell: HostShell, mark: str, *units: str, tag: str = "") -> str:
    """The messages of `units` logged after the entry `mark` points at; only those whose syslog
    identifier is `tag` when given (Postfix's daemons log under postfix.service or postfix@-.service,
    depending on how Postfix was last started, but always as postfix/<daemon>)."""
    args = " ".join([f"-u {u}" for u in units] + ([f"-t {tag}"] if tag else []))
    return _journalctl(shell, f"--after-cursor '{mark}' {args} -o cat")
