"""Sending limits as Debian 13's Rspamd and Postfix load them: the rules with a user's and a domain's
override, the outbound pacing transport, and both turned off again (nothing of them left).

    sudo .venv/bin/python -m pytest -m chroot tests/mailcore/test_limits_load.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import mockrun
import settings
from components.mail import limits, services
from lab.trixie_chroot import mounted, run_in, scratch
from tests.mailcore.conftest import (
    _SYSTEMCTL_STUB,
    DUMMY_LATE,
    PROJECT,
    declare_inactive,
    install_step,
    run_step_script,
)
from tests.test_limits import OVERRIDES

pytestmark = pytest.mark.chroot

ON = {
    "login": {"messages": {"count": 3, "per": "30s", "burst": 3}},
    "outbound": {"domains": ["gmail.com", "outlook.com"], "delay": "5s"},
}


def _settings(tmp_path: Path, limits_config: dict[str, object]) -> settings.Settings:
    mail_list = tmp_path / "mail_list.yml"
    mail_list.write_text(OVERRIDES)
    cfg = {**mockrun.stack_config("lab"), "sams:mailList": str(mail_list), "sams:limits": json.dumps(limits_config)}
    return settings.load("lab", cfg, PROJECT)


def _ok(root: Path, *argv: str) -> tuple[str, str]:
    result = run_in(root, list(argv))
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout, result.stderr


def _apply(root: Path, s: settings.Settings) -> None:
    for spec in (services.mail_base_step(s), services.rspamd_step(s), services.postfix_step(s)):
        run_step_script(root, spec, DUMMY_LATE, install_step(root, spec, DUMMY_LATE))


def test_rspamd_and_postfix_load_the_limits_and_drop_them_when_off(tmp_path: Path) -> None:
    on = _settings(tmp_path, ON)
    with scratch(tmp_path / "tree") as root, mounted(root):
        stub = root / "usr/local/sbin/systemctl"
        stub.write_text(_SYSTEMCTL_STUB)
        stub.chmod(0o755)
        declare_inactive(root, "rspamd")  # no Rspamd runs here: its step's reload waits for a running one
        _apply(root, on)  # the step's own check passed too: configtest without a dropped rule

        out, err = _ok(root, "rspamadm", "configtest")
        assert "syntax OK" in out
        assert not re.search(r"ratelimit|selector|bucket", err, re.I), err  # Rspamd parsed every rule
        dump, _ = _ok(root, "rspamadm", "configdump", "ratelimit")
        for rule in limits.rules(on):
            assert f'selector = "{rule.selector}";' in dump, rule.name
            assert f'rate = "{rule.rate_text}";' in dump and f'message = "{rule.message}";' in dump
        assert 'info_symbol = "SAMS_RATELIMIT";' in dump
        assert f'whitelisted_rcpts = "{limits.EXEMPT_RCPTS_MAP}";' in dump
        assert (root / limits.EXEMPT_RCPTS_MAP.lstrip("/")).exists()

        check_out, check_err = _ok(root, "postfix", "check")
        assert not re.search(r"warning", check_out + check_err, re.I), check_out + check_err
        postconf = run_in(root, ["postconf", "-n"])
        assert postconf.returncode == 0 and postconf.stderr == "", postconf.stderr  # no unused parameter
        assert "warmup_destination_rate_delay = 5s" in postconf.stdout
        found, _ = _ok(root, "postmap", "-q", "outlook.com", f"texthash:{limits.WARMUP_TRANSPORT_MAP}")
        assert found.strip() == "warmup:"
        service, _ = _ok(root, "postconf", "-M", "warmup/unix")
        assert re.match(r"warmup\s+unix\s+-\s+-\s+y\s+-\s+-\s+smtp -o syslog_name=postfix/warmup$", service.strip())

        off = _settings(tmp_path, {"enabled": False})
        _apply(root, off)
        dump, _ = _ok(root, "rspamadm", "configdump", "ratelimit")
        assert re.search(r"^enabled = false;$", dump, re.M) and "rates" not in dump, dump
        assert not (root / limits.EXEMPT_RCPTS_MAP.lstrip("/")).exists()
        assert not (root / limits.WARMUP_TRANSPORT_MAP.lstrip("/")).exists()
        postconf = run_in(root, ["postconf", "-n"])
        assert postconf.stderr == "" and "transport_maps" not in postconf.stdout and "warmup" not in postconf.stdout
        assert run_in(root, ["postconf", "-M", "warmup/unix"]).stdout.strip() == ""
