"""components/users/hashing.py against libxcrypt's crypt(3), the implementation Dovecot verifies with."""

from __future__ import annotations

import random
import re

import pytest

from components.users.hashing import SHA512_ROUNDS_DEFAULT, hash_password, sha512_crypt
from tests.users.conftest import libcrypt


def test_the_specification_vectors() -> None:
    # From Drepper's "Unix crypt using SHA-256 and SHA-512", the SHA-512 test table.
    assert sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
    )
    # A salt longer than 16 characters is cut to 16.
    assert sha512_crypt("Hello world!", "saltstringsaltstring", rounds=10000) == (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/"
        "YTBmSK6H9qs/y3RnOaw5v."
    )


def test_matches_crypt3_on_random_inputs() -> None:
    rng = random.Random(20261124)
    alphabet = "aZ9 é€\t!$"
    for _ in range(60):
        password = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 140)))  # past 64 bytes too
        salt = "".join(rng.choice("./09AZaz") for _ in range(rng.randint(1, 16)))
        rounds = rng.choice([SHA512_ROUNDS_DEFAULT, 1000, 4321])
        setting = f"$6${salt}" if rounds == SHA512_ROUNDS_DEFAULT else f"$6$rounds={rounds}${salt}"
        assert sha512_crypt(password, salt, rounds) == libcrypt(password, setting), (password, salt, rounds)


def test_new_hashes_have_a_fresh_full_salt_and_verify() -> None:
    first, second = hash_password("same password", "SHA512-CRYPT"), hash_password("same password", "SHA512-CRYPT")
    assert first != second
    crypted = first.removeprefix("{SHA512-CRYPT}")
    assert re.fullmatch(r"\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}", crypted)
    assert libcrypt("same password", crypted) == crypted
    assert libcrypt("same passwore", crypted) != crypted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"salt": "bad salt"}, "salt must be"), ({"salt": ""}, "salt must be"), ({"rounds": 999}, "rounds must be")],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sha512_crypt("pw", **kwargs)  # type: ignore[arg-type]


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown password scheme 'MD5'"):
        hash_password("pw", "MD5")  # type: ignore[arg-type]
