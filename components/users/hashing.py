"""Password hashes in the forms Dovecot 2.4 verifies: "{SHA512-CRYPT}$6$..." and "{ARGON2ID}$argon2id$...".

Which scheme new hashes use is `sams:users.passwordScheme`; Dovecot verifies every stored hash by its
own "{SCHEME}" prefix, so changing the setting never invalidates a password already set.

SHA512-CRYPT (the default) is glibc/libxcrypt's "$6$" crypt at its standard 5,000 rounds, written here
in Python from Drepper's specification (the `crypt` module is gone from Python 3.13, and the program
must not depend on the runner's libc). Its cost is 3-5 ms of CPU a verification on this project's
machine (libxcrypt: 3.2-4.0 ms; Dovecot's auth worker in `perf`: ~4.9 ms); the generated passwords carry
~95 bits of entropy, which no hash speed makes guessable. ARGON2ID (64 MiB, 3 passes) costs ~250 ms and
64 MiB of memory per login here: the stronger choice for passwords people choose, at the price of login
latency and of memory that a flood of logins can exhaust on a small host.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import get_args

from settings.stack import PasswordScheme as Scheme

SCHEMES: tuple[Scheme, ...] = get_args(Scheme)

# crypt(3)'s default for "$6$"; what `doveadm pw -s SHA512-CRYPT` writes too.
SHA512_ROUNDS_DEFAULT = 5000
_ROUNDS_MIN, _ROUNDS_MAX = 1000, 999_999_999
_SALT_LENGTH = 16  # the longest salt "$6$" uses: 96 bits
_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The order in which the 64 digest bytes are encoded, three at a time (then byte 63 alone).
_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
)  # fmt: skip

# Argon2id, single lane: Dovecot 2.4 verifies {ARGON2ID} through libsodium, whose verifier needs p=1.
ARGON2_TIME_COST = 3
ARGON2_MEMORY_KIB = 65536
ARGON2_PARALLELISM = 1


def _b64(value: int, chars: int) -> str:
    out = []
    for _ in range(chars):
        out.append(_ITOA64[value & 0x3F])
        value >>= 6
    return "".join(out)


def _repeat(digest: bytes, length: int) -> bytes:
    return (digest * (length // len(digest) + 1))[:length]


def sha512_crypt(password: str, salt: str | None = None, rounds: int = SHA512_ROUNDS_DEFAULT) -> str:
    """crypt(3)'s "$6$[rounds=N$]salt$hash" for `password` (UTF-8)."""
    if not _ROUNDS_MIN <= rounds <= _ROUNDS_MAX:
        raise ValueError(f"SHA512-CRYPT rounds must be {_ROUNDS_MIN}..{_ROUNDS_MAX}, not {rounds}")
    if salt is None:
        salt = "".join(secrets.choice(_ITOA64) for _ in range(_SALT_LENGTH))
    if not salt or any(c not in _ITOA64 for c in salt):
        raise ValueError(f"SHA512-CRYPT salt must be 1-16 characters of [./0-9A-Za-z], not {salt!r}")
    key, salt_b = password.encode(), salt[:_SALT_LENGTH].encode()

    alternate = hashlib.sha512(key + salt_b + key).digest()
    a = hashlib.sha512(key + salt_b)
    a.update(_repeat(alternate, len(key)))
    n = len(key)
    while n:
        a.update(alternate if n & 1 else key)
        n >>= 1
    current = a.digest()

    p = _repeat(hashlib.sha512(key * len(key)).digest(), len(key))
    s = _repeat(hashlib.sha512(salt_b * (16 + current[0])).digest(), len(salt_b))
    for i in range(rounds):
        h = hashlib.sha512(p if i & 1 else current)
        if i % 3:
            h.update(s)
        if i % 7:
            h.update(p)
        h.update(current if i & 1 else p)
        current = h.digest()

    encoded = "".join(_b64((current[x] << 16) | (current[y] << 8) | current[z], 4) for x, y, z in _ORDER)
    encoded += _b64(current[63], 2)
    prefix = "$6$" if rounds == SHA512_ROUNDS_DEFAULT else f"$6$rounds={rounds}$"
    return f"{prefix}{salt_b.decode()}${encoded}"


def argon2id(password: str) -> str:
    from argon2 import PasswordHasher

    ph = PasswordHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM)
    return ph.hash(password)


def hash_password(password: str, scheme: Scheme) -> str:
    """Dovecot's "{SCHEME}..." form of `password` (the schema's CHECK accepts both)."""
    if scheme == "SHA512-CRYPT":
        return "{SHA512-CRYPT}" + sha512_crypt(password)
    if scheme == "ARGON2ID":
        return "{ARGON2ID}" + argon2id(password)
    raise ValueError(f"unknown password scheme {scheme!r}: one of {', '.join(SCHEMES)}")
