"""bench.webmail_candidates' rendered configs: loopback only, bench ports only (the machine's network
rule), and a Dovecot hash that verifies the password the bench logs in with."""

from __future__ import annotations

import re

import pytest

from bench import webmail_candidates as w
from components.users.hashing import sha512_crypt


def _listeners() -> list[tuple[str, str]]:
    """(what, "address:port") of every listener the bench's configs and command lines open."""
    found = [("nginx", m) for m in re.findall(r"listen (\S+);", w.nginx_conf())]
    found += [("sogod", m) for m in re.findall(r'WOPort = "([^"]+)"', w.sogo_conf("x"))]
    for auth in ("dovecot", "plugin", "imap"):
        found += [("radicale", m) for m in re.findall(r"hosts = (\S+)", w.radicale_conf(auth))]
    found.append(("dovecot", f"127.0.0.1:{w.IMAP_PORT}"))  # listen = 127.0.0.1, port below
    found += [("postgresql", f"127.0.0.1:{w.PG_PORT}"), ("memcached", f"127.0.0.1:{w.MEMCACHED_PORT}")]
    return found


@pytest.mark.parametrize(("what", "where"), _listeners())
def test_every_listener_is_loopback_on_a_bench_port(what: str, where: str) -> None:
    host, _, port = where.rpartition(":")
    assert host == "127.0.0.1", what
    assert 18000 <= int(port) <= 18999, what


def test_dovecot_listens_on_loopback_only_with_no_imaps() -> None:
    conf = w.dovecot_conf()
    assert "listen = 127.0.0.1\n" in conf
    assert f"port = {w.IMAP_PORT}" in conf
    assert re.search(r"inet_listener imaps \{\s*port = 0", conf)


def test_the_users_hash_verifies_their_password() -> None:
    passwords = {u: f"pw-{n}" for n, u in enumerate(w.USERS)}
    lines = w.dovecot_users(passwords).splitlines()
    assert len(lines) == len(w.USERS)
    for line in lines:
        user, scheme_hash = line.split(":")[:2]
        stored = scheme_hash.removeprefix("{SHA512-CRYPT}")
        salt = stored.split("$")[2]
        assert sha512_crypt(passwords[user], salt) == stored
        assert sha512_crypt("wrong", salt) != stored


def test_only_the_plugin_auth_lacks_a_login_cache() -> None:
    # The plugin overrides Radicale's login(), so cache_logins would be silently ignored there.
    assert "cache_logins = true" in w.radicale_conf("dovecot")
    assert "cache_logins = true" in w.radicale_conf("imap")
    assert "cache_logins" not in w.radicale_conf("plugin")
