"""The password policy (pure, standard library only): this very file is installed on the host beside
sams-passwd (files/sams-passwd.py imports it), and Roundcube's password plugin is given MIN_LENGTH,
so the page, the service and the tests apply one set of rules with the same words."""

from __future__ import annotations

from dataclasses import dataclass

# NIST SP 800-63B 5.1.1.2: at least 8 characters, no composition rules, refuse known-bad choices. 10 is
# SAMS's floor: a mailbox password is also the SMTP and IMAP password, guessed online from anywhere.
MIN_LENGTH = 10
MAX_LENGTH = 128  # Dovecot's SASL and SHA512-CRYPT take more; a longer one is a paste accident.
# The most common choices of the breached-password lists that fit the length (a short list on purpose:
# the plugin's and the service's checks are the same code path for every user, no download).
COMMON: tuple[str, ...] = (
    "1234567890",
    "0123456789",
    "1q2w3e4r5t",
    "qwertyuiop",
    "password123",
    "password1234",
    "passw0rd123",
    "iloveyou123",
    "letmein1234",
    "changeme123",
    "welcome1234",
    "administrator",
    "qwerty12345",
    "abcdefghij",
    "abc1234567",
)


@dataclass(frozen=True)
class Refusal:
    """Why a new password is refused, in words a user acts on."""

    message: str


def check(new: str, *, address: str, current: str) -> Refusal | None:
    """None when *new* may replace *current* for *address*, else the reason."""
    if len(new) < MIN_LENGTH:
        return Refusal(f"The new password is too short: use at least {MIN_LENGTH} characters.")
    if len(new) > MAX_LENGTH:
        return Refusal(f"The new password is too long: use at most {MAX_LENGTH} characters.")
    if new == current:
        return Refusal("The new password is the same as the current one: choose a different one.")
    lowered = new.lower()
    local = address.split("@", 1)[0].lower()
    if lowered in COMMON or len(set(lowered)) <= 3:
        return Refusal("The new password is too easy to guess: choose a longer, less common one.")
    if local and len(local) >= 3 and local in lowered:
        return Refusal("The new password contains your address: choose one that does not.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in new):
        return Refusal("The new password contains a control character: use letters, digits, spaces or symbols.")
    return None


__all__ = ["COMMON", "MAX_LENGTH", "MIN_LENGTH", "Refusal", "check"]
