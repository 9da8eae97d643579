"""The mail host as the internet and the admin's laptop see it: `World`, with known passwords.

The users step gives every user a generated first password that only Vault keeps (the lab runs
no Vault, so no test knows it): `world()` (`known_passwords`) writes a known hash per user
straight into the database, as a user's own password change would, and puts the stored hashes back
afterwards. Names resolve through the lab DNS (lab/dns.py), which serves the zones the program
publishes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from lab import acme
from lab.hostcmd import PSQL, WAIT_RSPAMD, sh
from lab.netclient import Reply, dialogue, imap_read, in_netns, message, submit
from lab.session import Lab
from lab.spec import NAMES

T = TypeVar("T")


DOMAIN = "sams.test"


USERS = ("alice@sams.test", "bob@sams.test", "tiny@sams.test", "carol@other.test")


# The GTUBE test string (rspamd rejects it like SpamAssassin's; split so this file is no GTUBE).
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def password_of(address: str) -> str:
    return f"{address.split('@')[0]}-E2E-pass-1"


def write_hashes(lab: Lab, hashes: dict[str, str | None]) -> None:
    sql = ["BEGIN;"]
    for address, digest in hashes.items():
        local, domain = address.split("@")
        value = "NULL" if digest is None else f"'{digest}'"
        sql.append(f"UPDATE users SET password_hash = {value} WHERE local_part = '{local}' AND domain = '{domain}';")
    sql.append("COMMIT;")
    sh(lab, PSQL, stdin="\n".join(sql))
    sh(lab, "doveadm auth cache flush >/dev/null")  # as the password runbook does after its UPDATE


def stored_hashes(lab: Lab) -> dict[str, str | None]:
    rows = sh(lab, f"{PSQL} -At", stdin="SELECT local_part || '@' || domain, password_hash FROM users;")
    found = dict(line.split("|", 1) for line in rows.splitlines() if line)
    return {a: found.get(a) or None for a in USERS}


@contextlib.contextmanager
def known_passwords(lab: Lab) -> Iterator[dict[str, str]]:
    """A known password per user while the tests run, the stored hashes back afterwards.

    The users step's first passwords are in Vault only; this stands in for a user's own change and
    must not leave its own behind for the modules after this one.
    """
    saved = stored_hashes(lab)
    scheme = lab.settings.config.users.password_scheme  # the scheme the users step writes
    write_hashes(lab, {a: sh(lab, f"doveadm pw -s {scheme} -p '{password_of(a)}'").strip() for a in USERS})
    try:
        yield {a: password_of(a) for a in USERS}
    finally:
        write_hashes(lab, saved)


class World:
    """The mail host as the internet and the admin's laptop see it."""

    def __init__(self, lab: Lab, cafile: str, passwords: dict[str, str]) -> None:
        self.lab = lab
        self.cafile = cafile
        self.passwords = passwords
        self.host = lab.settings.config.hostname

    def inet(self, fn: Callable[..., T], *args: Any, timeout: float = 120) -> T:
        return in_netns(NAMES.ns_inet, {self.host: self.lab.spec.public_ipv4}, fn, *args, timeout=timeout)

    def admin(self, fn: Callable[..., T], *args: Any, timeout: float = 120) -> T:
        return in_netns(NAMES.ns_admin, {self.host: self.lab.spec.vpn_host}, fn, *args, timeout=timeout)

    def login(self, address: str) -> tuple[str, str]:
        return (address, self.passwords[address])

    def submit(self, port: int, user: str, to: list[str], subject: str, sender: str = "", **kw: Any) -> str:
        sender = sender or user
        data = message(sender, ", ".join(to), subject, **kw)
        return self.inet(submit, self.host, port, self.cafile, self.login(user), sender, to, data)

    def read(self, user: str, subject: str, want: int = 1, wait: float = 30) -> list[bytes]:
        return self.inet(imap_read, self.host, self.cafile, self.login(user), subject, want, wait)

    def mx(self, steps: list[tuple[str, str]]) -> list[Reply]:
        """A remote MTA (mx.sender.example) talking to port 25."""
        return self.inet(dialogue, self.host, 25, steps)["replies"]


@contextlib.contextmanager
def world(lab: Lab, directory: Path) -> Iterator[World]:
    """Passwords for the users; clients trust Pebble's issuing root and intermediate (lab/acme.py)."""
    cafile = directory / "pebble-issuers.pem"
    cafile.write_text(acme.issuer_pems(lab.paths, lab.spec.inet_ipv4))
    # The mail steps have just (re)started Rspamd: wait for its milter, or the first message gets 451.
    sh(lab, WAIT_RSPAMD)
    with known_passwords(lab) as passwords:
        yield World(lab, str(cafile), passwords)


def subject(tag: str) -> str:
    return f"e2e-{tag}-{uuid.uuid4().hex[:10]}"
