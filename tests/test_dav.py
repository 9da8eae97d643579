"""The DAV steps (pure): Radicale's configuration, nginx's /dav/ locations, and what turning
calendars off leaves behind. The daemons load these files in tests/mailcore/test_dav.py."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.dav import plan
from components.dav.steps import dav_step, packages_step
from settings import load

PROJECT = Path(__file__).resolve().parents[1]


def settings_with(stack: str, webmail: dict[str, Any], **extra: Any) -> Any:
    cfg = {**mockrun.stack_config(stack), **mockrun.TEST_SECRETS, "sams:webmail": json.dumps(webmail)}
    cfg.update({k: json.dumps(v) for k, v in extra.items()})
    return load(stack, cfg, PROJECT)


def _config(settings: Any) -> configparser.ConfigParser:
    files = {f.path: f for f in dav_step(settings).files}
    parser = configparser.ConfigParser()
    parser.read_string(files[plan.CONFIG].content)
    return parser


def test_calendars_are_on_by_default_with_webmail() -> None:
    settings = load("lab", {**mockrun.stack_config("lab"), **mockrun.TEST_SECRETS}, PROJECT)
    assert plan.calendars_on(settings.config) and not plan.calendars_public(settings.config)
    assert packages_step(settings) is not None
    assert {f.path for f in dav_step(settings).files} == {plan.CONFIG, plan.NGINX_INCLUDE}


def test_radicale_checks_passwords_at_the_hosts_own_dovecot_over_verified_tls() -> None:
    settings = settings_with("prod", {})
    conf = _config(settings)
    assert conf["auth"]["type"] == "imap"
    # The host's name (its certificate's), implicit TLS: never a loopback address without a name.
    assert conf["auth"]["imap_host"] == f"{settings.config.hostname}:993"
    assert conf["auth"]["imap_security"] == "tls"
    # Radicale 3.5.3's cache refuses a good login after an expired failure (Kozea/Radicale#2079).
    assert conf["auth"]["cache_logins"] == "false"
    assert conf["rights"]["type"] == "owner_only"
    assert conf["storage"]["filesystem_folder"] == plan.DAV_COLLECTIONS
    # Only nginx reaches it.
    assert conf["server"]["hosts"] == "127.0.0.1:5232"


def test_every_radicale_setting_says_why() -> None:
    text = next(f.content for f in dav_step(settings_with("prod", {})).files if f.path == plan.CONFIG)
    previous = ""
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            assert previous.startswith("#"), f"no comment above {line!r}"
        previous = line


def test_nginx_proxies_dav_with_the_script_name_and_redirects_well_known() -> None:
    text = next(f.content for f in dav_step(settings_with("prod", {})).files if f.path == plan.NGINX_INCLUDE)
    assert "location ^~ /dav/ {" in text
    assert "proxy_pass http://127.0.0.1:5232;" in text  # the path unchanged: Radicale strips /dav
    assert "proxy_set_header X-Script-Name /dav;" in text
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text  # what Radicale logs, unspoofed
    for path in ("/.well-known/caldav", "/.well-known/carddav"):
        assert f"location = {path} {{\n    return 301 /dav/;\n}}" in text


@pytest.mark.parametrize("webmail", [{"calendars": False}, {"enabled": False}, {"enabled": False, "calendars": True}])
def test_calendars_off_stops_radicale_and_writes_nothing(webmail: dict[str, Any]) -> None:
    settings = settings_with("prod", webmail)
    assert not plan.calendars_on(settings.config)
    assert packages_step(settings) is None
    spec = dav_step(settings)
    # sams-apply takes back the files the step wrote before (Debian's config file returns).
    assert spec.name == "dav" and spec.files == ()
    assert "systemctl disable -q --now radicale.service" in spec.script
    assert f"changed {plan.NGINX_INCLUDE}" in spec.script and "systemctl reload nginx" in spec.script
    # The collections are the users' data: never removed.
    assert plan.DAV_COLLECTIONS not in spec.script


def test_public_calendars_get_a_jail_on_radicales_failed_logins() -> None:
    """Radicale's logins reach Dovecot from 127.0.0.1: the jail reads Radicale's own line, which
    names nginx's peer address (the lab runs fail2ban-regex and a guesser: test_webmail_lab.py)."""
    vpn, public = settings_with("prod", {}), settings_with("prod", {"exposure": "public"})
    assert not {plan.FAIL2BAN_JAIL, plan.FAIL2BAN_FILTER} & {f.path for f in dav_step(vpn).files}
    files = {f.path: f.content for f in dav_step(public).files}
    jail = configparser.ConfigParser(interpolation=None)
    jail.read_string(files[plan.FAIL2BAN_JAIL])
    assert dict(jail[plan.FAIL2BAN_JAIL_NAME]) == {"enabled": "true", "filter": plan.FAIL2BAN_JAIL_NAME, "port": "443"}
    flt = configparser.ConfigParser(interpolation=None)
    flt.read_string(files[plan.FAIL2BAN_FILTER])
    assert flt["Definition"]["journalmatch"] == f"_SYSTEMD_UNIT={plan.UNIT}.service"
    # fail2ban's <HOST> and prefix, approximated: the address is the forwarded one, never a part of
    # the login name (which the client chooses and Radicale logs after it).
    regex = flt["Definition"]["failregex"].replace("%(__prefix_line)s", r"\S+ radicale\[\d+\]: ")
    regex = regex.replace("<HOST>", r"(?P<host>[0-9a-f.:]+)")
    line = (
        "sams radicale[812]: [812/Thread-3 (process_request_thread)] [WARNING] Failed login attempt from "
        "127.0.0.1 (forwarded for '198.51.100.7'): \"x (forwarded for '203.0.113.9'): \" (reason)"
    )
    match = re.match(regex, line)
    assert match and match["host"] == "198.51.100.7", regex
    assert not re.match(regex, line.replace("[WARNING] Failed", "[INFO] Successful"))
    # Both ways: the jail's files come and go with the exposure, fail2ban reloads either way.
    for settings in (vpn, public, settings_with("prod", {"calendars": False})):
        services = {s.unit: s.watches for s in dav_step(settings).services}
        assert services == {"fail2ban.service": (plan.FAIL2BAN_JAIL, plan.FAIL2BAN_FILTER)}


def test_nginx_reloads_only_when_its_file_changed() -> None:
    script = dav_step(settings_with("prod", {})).script
    reload = f"if changed {plan.NGINX_INCLUDE} && systemctl is-active -q nginx; then\n    systemctl reload nginx"
    assert reload in script
    assert "nginx -t -q" in script
    assert f"if changed {plan.CONFIG}; then\n    systemctl restart radicale.service" in script


def test_the_scripts_are_shellcheck_clean(tmp_path: Path) -> None:
    assert shutil.which("shellcheck"), "shellcheck is part of the test tools (see ./run)"
    on, off = settings_with("prod", {}), settings_with("prod", {"calendars": False})
    specs = [dav_step(on), dav_step(off), packages_step(on)]
    for spec in specs:
        assert spec is not None
        script = tmp_path / "script.sh"
        script.write_text(spec.script)
        out = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout
