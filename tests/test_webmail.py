"""The webmail's rendered files and the password policy (pure; the lab runs them for real:
lab/tests/test_webmail_lab.py, and tests/mailcore/test_database.py runs sams-passwd)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.firewall.policy import PASSWD_PORT, port_policy, public_ports
from components.webmail import plan, policy, steps
from settings import load

PROJECT = Path(__file__).resolve().parents[1]


def settings_with(webmail: dict[str, Any], **extra: Any) -> Any:
    cfg = {**mockrun.stack_config("prod"), **mockrun.TEST_SECRETS, "sams:webmail": json.dumps(webmail)}
    cfg.update({f"sams:{k}": mockrun.encode_config(v) for k, v in extra.items()})
    return load("prod", cfg, PROJECT)


def files_of(settings: Any) -> dict[str, str]:
    return {f.path: f.content for f in steps.webmail_step(settings).files}


def test_vpn_exposure_serves_the_hostname_on_the_tunnel_only() -> None:
    s = settings_with({})
    assert s.config.webmail.enabled and s.config.webmail.exposure == "vpn"
    site = files_of(s)[plan.NGINX_SITE]
    assert re.findall(r"^\s*listen (\S+) ssl;", site, flags=re.M) == [f"{s.config.wireguard.address}:443"]
    assert f"server_name {s.config.hostname};" in site
    assert "Strict-Transport-Security" not in site
    # No jail for a login nobody on the internet can reach; nginx waits for wg0 to bind its address.
    assert plan.FAIL2BAN_JAIL not in files_of(s) and plan.NGINX_DROPIN in files_of(s)


def test_public_exposure_adds_hsts_and_the_jail() -> None:
    s = settings_with({"exposure": "public"})
    f = files_of(s)
    assert re.findall(r"^\s*listen (\S+) ssl;", f[plan.NGINX_SITE], flags=re.M) == ["443", "[::]:443"]
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in f[plan.NGINX_SITE]
    assert "filter = sams-roundcube" in f[plan.FAIL2BAN_JAIL]
    assert f"journalmatch = SYSLOG_IDENTIFIER={plan.SYSLOG_ID}" in f[plan.FAIL2BAN_FILTER]
    assert plan.NGINX_DROPIN not in f


def test_every_login_post_is_rate_limited() -> None:
    site = files_of(settings_with({}))[plan.NGINX_SITE]
    assert '"POST:login" $binary_remote_addr;' in site
    # Both entry points Roundcube's form can post to carry the limit; no other PHP file is served.
    for location in ("location = / {", "location = /index.php {"):
        block = site.split(location, 1)[1].split("}", 1)[0]
        assert "limit_req zone=sams_webmail_login" in block and "fastcgi_pass" in block
    assert re.search(r"location ~ \\\.php\$ \{\s*return 404;", site)


def test_roundcube_talks_tls_to_the_hosts_own_daemons_and_sets_safe_cookies() -> None:
    s = settings_with({})
    config = files_of(s)[plan.ROUNDCUBE_CONFIG]
    host = s.config.hostname
    assert f"$config['imap_host'] = 'ssl://{host}:993';" in config
    assert f"$config['smtp_host'] = 'ssl://{host}:465';" in config
    assert "'verify_peer' => true, 'verify_peer_name' => true" in config
    assert "$config['use_https'] = true;" in config and "$config['session_samesite'] = 'Strict';" in config
    # The session key is read on the host, never rendered into the file.
    assert f"file_get_contents('{plan.DES_KEY_FILE}')" in config
    plugin = files_of(s)[plan.PASSWORD_PLUGIN_CONFIG]
    assert f"$config['password_pop_port'] = {PASSWD_PORT};" in plugin
    assert f"$config['password_minimum_length'] = {policy.MIN_LENGTH};" in plugin


def test_dovecot_trusts_the_browsers_address_from_roundcubes_own_source_only() -> None:
    """Roundcube binds its IMAP connections to one loopback address and its plugin sends the browser's
    address before LOGIN; Dovecot takes that forward from this one address, and from none with the
    webmail off."""
    from components.mail import services

    def dovecot_conf(s: Any) -> str:
        return {f.path: f.content for f in services.dovecot_step(s).files}["/etc/dovecot/dovecot.conf"]

    s = settings_with({})
    f = files_of(s)
    config = f[plan.ROUNDCUBE_CONFIG]
    assert f"'socket' => ['bindto' => '{plan.IMAP_SOURCE}:0']" in config.split("imap_conn_options", 1)[1].split(";")[0]
    assert "bindto" not in config.split("smtp_conn_options", 1)[1].split(";")[0]
    assert f"$config['plugins'] = ['password', '{plan.CLIENT_IP_PLUGIN}'];" in config
    plugin = f[plan.CLIENT_IP_PLUGIN_FILE]
    assert f"class {plan.CLIENT_IP_PLUGIN} extends rcube_plugin" in plugin
    assert "'preauth_ident'" in plugin and "$_SERVER['REMOTE_ADDR']" in plugin and "FORWARDED" not in plugin
    trusted = re.findall(r"^login_trusted_networks = (.*)$", dovecot_conf(s), flags=re.M)
    assert trusted == [f"{plan.IMAP_SOURCE}/32"]
    off = settings_with({"enabled": False})
    assert "login_trusted_networks" not in dovecot_conf(off)
    assert f'rmdir "$(dirname {plan.CLIENT_IP_PLUGIN_FILE})"' in steps.webmail_step(off).script


def test_the_password_service_port_is_never_public() -> None:
    s = settings_with({"exposure": "public"})
    assert PASSWD_PORT not in {p.number for p in public_ports(s.config)}
    socket_unit = files_of(s)[plan.PASSWD_UNIT_FILES[0]]
    assert f"ListenStream=127.0.0.1:{PASSWD_PORT}" in socket_unit


def test_webmail_on_the_vpn_without_public_web_opens_443_on_the_tunnel() -> None:
    s = settings_with({}, publicWeb=False, acme={"challenge": "dns-01-cloudflare"})
    assert [(p.number, p.exposure) for p in port_policy(s.config) if p.number == 443] == [(443, "vpn")]
    off = settings_with({"enabled": False}, publicWeb=False, acme={"challenge": "dns-01-cloudflare"})
    assert 443 not in {p.number for p in port_policy(off.config)}


def test_webmail_off_installs_nothing() -> None:
    s = settings_with({"enabled": False})
    assert steps.packages_step(s) is None
    off = steps.webmail_step(s)
    assert off.files == () and "systemctl disable -q --now php8.4-fpm.service" in off.script
    # The one secret the step made on the host (not a declared file) goes too.
    assert f"rm -f {plan.DES_KEY_FILE}" in off.script


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        ("short", "too short"),
        ("x" * 129, "too long"),
        ("1234567890", "too easy to guess"),
        ("aaaaaaaaaaaa", "too easy to guess"),
        ("alice-is-great-2026", "contains your address"),
        ("old password 1", "same as the current one"),
        ("tab\tinside password", "control character"),
    ],
)
def test_the_policy_refuses_with_words_a_user_acts_on(new: str, reason: str) -> None:
    refusal = policy.check(new, address="alice@example.org", current="old password 1")
    assert refusal is not None and reason in refusal.message


def test_the_policy_accepts_a_good_password() -> None:
    assert policy.check("Plum tree on the hill 42", address="alice@example.org", current="old password 1") is None
