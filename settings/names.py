"""Validated name types shared by the stack config and the mail list."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def check_domain(value: str) -> str:
    """A lowercase DNS name with at least two labels and an alphabetic TLD (or xn-- IDN TLD)."""
    if value != value.strip().lower() or value.endswith("."):
        raise ValueError("domain names are written in lowercase, without a trailing dot")
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError("not a valid domain name")
    tld = labels[-1]
    if not (tld.isalpha() or tld.startswith("xn--")):
        raise ValueError("the top-level label must be alphabetic")
    return value


DomainName = Annotated[str, AfterValidator(check_domain)]

_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\n]*)?$"
)


def check_ssh_public_key(value: str) -> str:
    if not _SSH_KEY.match(value.strip()):
        raise ValueError("not an OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... comment')")
    return value.strip()


SshPublicKey = Annotated[str, AfterValidator(check_ssh_public_key)]

_WG_KEY = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")


def check_wg_key(value: str) -> str:
    if not _WG_KEY.match(value):
        raise ValueError("not a WireGuard key (44 base64 characters, as printed by `wg pubkey`)")
    return value


WireGuardKey = Annotated[str, AfterValidator(check_wg_key)]
