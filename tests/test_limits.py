"""Sending limits (sams:limits, the mail list's limits): bad values are refused with file, line, key
and value; the rendered Rspamd rules and Postfix pacing say what the settings say, and nothing more."""

from __future__ import annotations

import fnmatch
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.mail import limits, services
from settings import Settings, SettingsError, load
from settings.limits import LimitsSettings

PROJECT = Path(__file__).resolve().parents[1]
LAB_LIST = (PROJECT / "stacks" / "lab" / "mail_list.yml").read_text()


def _load(tmp_path: Path, overrides: dict[str, Any] | None = None, mail_list: str | None = None) -> Settings:
    """The lab stack (no relay) with these config overrides and, optionally, another mail list."""
    shutil.copy(PROJECT / "Pulumi.lab.yaml", tmp_path / "Pulumi.lab.yaml")
    (tmp_path / "stacks" / "lab").mkdir(parents=True, exist_ok=True)
    (tmp_path / "stacks" / "lab" / "mail_list.yml").write_text(mail_list if mail_list is not None else LAB_LIST)
    cfg = mockrun.stack_config("lab", PROJECT)
    cfg.update({k: mockrun.encode_config(v) for k, v in (overrides or {}).items()})
    return load("lab", cfg, tmp_path)


def _problems(tmp_path: Path, overrides: dict[str, Any] | None = None, mail_list: str | None = None) -> str:
    with pytest.raises(SettingsError) as exc:
        _load(tmp_path, overrides, mail_list)
    return str(exc.value)


def _files(settings: Settings) -> dict[str, str]:
    return {f.path: f.content for spec in services.mail_steps(settings) for f in spec.files}


# An override for alice (messages only) and for the domain sams.test (recipients only).
OVERRIDES = LAB_LIST.replace(
    "      - alice\n",
    "      - name: alice\n        limits:\n          messages: {count: 50, per: 1m, burst: 20}\n",
).replace(
    "  - name: sams.test\n",
    "  - name: sams.test\n    limits:\n      recipients: {count: 9000, per: 1h, burst: 3000}\n",
)


# --- settings ----------------------------------------------------------------------------------------


def test_defaults_are_on_and_generous() -> None:
    d = LimitsSettings()
    assert d.enabled and d.outbound.domains == []
    assert (d.login.messages.burst, d.login.messages.count, d.login.messages.per) == (100, 100, timedelta(hours=1))
    assert (d.login.recipients.burst, d.login.recipients.count) == (500, 500)
    assert (d.domain.messages.burst, d.domain.recipients.burst) == (1000, 5000)


def test_stack_limits_are_read(tmp_path: Path) -> None:
    s = _load(tmp_path, {"sams:limits": {"login": {"messages": {"count": 3, "per": "30s", "burst": 2}}}})
    login = s.config.limits.login
    assert (login.messages.count, login.messages.per, login.messages.burst) == (3, timedelta(seconds=30), 2)
    assert login.recipients == LimitsSettings().login.recipients  # the counter not given keeps its default


STACK_CASES = {
    "zero count": (
        {"login": {"messages": {"count": 0, "per": "1h", "burst": 5}}},
        "sams:limits.login.messages.count = 0: Input should be greater than 0",
    ),
    "no unit": (
        {"domain": {"recipients": {"count": 5, "per": "60", "burst": 5}}},
        "sams:limits.domain.recipients.per = '60': not a duration",
    ),
    "window too long": (
        {"login": {"messages": {"count": 5, "per": "30d", "burst": 5}}},
        "sams:limits.login.messages.per = '30d': the window must be between 1s and 7d",
    ),
    "missing burst": (
        {"login": {"recipients": {"count": 5, "per": "1h"}}},
        "sams:limits.login.recipients.burst = <missing>: Field required",
    ),
    "unknown key": (
        {"login": {"mesages": {"count": 5, "per": "1h", "burst": 5}}},
        "sams:limits.login.mesages = ",
    ),
    "bad delay": ({"outbound": {"domains": ["gmail.com"], "delay": "2h"}}, "sams:limits.outbound.delay = '2h'"),
    "own domain paced": (
        {"outbound": {"domains": ["gmail.com", "sams.test"]}},
        "sams:limits.outbound.domains[1] = 'sams.test': is one of this host's own mail domains",
    ),
    "domain twice": (
        {"outbound": {"domains": ["gmail.com", "gmail.com"]}},
        "sams:limits.outbound.domains[1] = 'gmail.com': listed twice",
    ),
}


@pytest.mark.parametrize("case", sorted(STACK_CASES))
def test_bad_stack_limits(tmp_path: Path, case: str) -> None:
    value, expected = STACK_CASES[case]
    assert expected in _problems(tmp_path, {"sams:limits": value})


def test_stack_errors_name_the_line(tmp_path: Path) -> None:
    """A limit written in the stack file is reported at its line there."""
    added = "  sams:limits:\n    login:\n      messages: {count: 0, per: 1h, burst: 1}\n"
    text = (PROJECT / "Pulumi.lab.yaml").read_text() + added
    shutil.copy(PROJECT / "Pulumi.lab.yaml", tmp_path / "Pulumi.lab.yaml")
    (tmp_path / "Pulumi.lab.yaml").write_text(text)
    (tmp_path / "stacks" / "lab").mkdir(parents=True)
    (tmp_path / "stacks" / "lab" / "mail_list.yml").write_text(LAB_LIST)
    cfg = mockrun.stack_config("lab", tmp_path)
    with pytest.raises(SettingsError) as exc:
        load("lab", cfg, tmp_path)
    line = len(text.splitlines())
    assert f"Pulumi.lab.yaml:{line}: sams:limits.login.messages.count = 0" in str(exc.value)


def test_outbound_pacing_and_a_relay_do_not_mix(tmp_path: Path) -> None:
    relay = {"host": "smtp.relay.example", "port": 587}
    found = _problems(tmp_path, {"sams:relay": relay, "sams:limits": {"outbound": {"domains": ["gmail.com"]}}})
    assert "sams:limits.outbound.domains = ['gmail.com']: with sams:relay every message leaves through" in found


def _bob(limits: str) -> str:
    return LAB_LIST.replace("      - bob\n", f"      - name: bob\n        limits: {limits}\n")


MAIL_LIST_CASES = {
    "user: negative burst": (
        _bob("{messages: {count: 5, per: 1h, burst: -1}}"),
        "stacks/lab/mail_list.yml:9: domains[0].users[1].limits.messages.burst = -1: Input should be greater than 0",
    ),
    "user: unknown counter": (
        _bob("{mails: {count: 5, per: 1h, burst: 5}}"),
        "stacks/lab/mail_list.yml:9: domains[0].users[1].limits.mails = ",
    ),
    "domain: bad window": (
        LAB_LIST.replace(
            "  - name: other.test\n",
            "  - name: other.test\n    limits:\n      messages: {count: 5, per: soon, burst: 5}\n",
        ),
        "stacks/lab/mail_list.yml:18: domains[1].limits.messages.per = 'soon': not a duration",
    ),
}


@pytest.mark.parametrize("case", sorted(MAIL_LIST_CASES))
def test_bad_mail_list_limits(tmp_path: Path, case: str) -> None:
    text, expected = MAIL_LIST_CASES[case]
    assert expected in _problems(tmp_path, mail_list=text)


# --- what Rspamd gets --------------------------------------------------------------------------------


def _rates(conf: str) -> dict[str, dict[str, str]]:
    """rates { "name" { selector = ...; bucket { key = value; ... } } } -> {name: {key: value}}."""
    out = {}
    for name, body in re.findall(r'^  "([^"]+)" \{\n(.*?)^  \}$', conf, re.M | re.S):
        out[name] = {k: v.strip('"') for k, v in re.findall(r"^\s+(\w+) = (.*);$", body, re.M)}
    return out


def test_default_rules(tmp_path: Path) -> None:
    conf = _files(_load(tmp_path))["/etc/rspamd/local.d/ratelimit.conf"]
    rates = _rates(conf)
    assert sorted(rates) == ["domain_messages", "domain_recipients", "login_messages", "login_recipients"]
    login = rates["login_messages"]
    assert login["selector"] == "id('login_messages');user.lower"
    assert (login["burst"], login["rate"], login["skip_recipients"]) == ("100", "100 / 3600s", "true")
    assert login["message"] == (
        "Sending limit reached for this login: 100 messages at once, then 100 per 1h. "
        "This message was not sent; try again later"
    )
    assert "skip_recipients" not in rates["login_recipients"]  # every recipient counts
    # Only authenticated mail has a domain bucket (user.id), keyed by the envelope sender's domain.
    assert rates["domain_recipients"]["selector"] == "id('domain_recipients');user.id;from('smtp'):domain.lower"
    assert re.search(r'^info_symbol = "SAMS_RATELIMIT";$', conf, re.M)
    assert re.search(r"^dynamic_rate_limit = false;$", conf, re.M)
    assert re.search(rf'^whitelisted_rcpts = "{limits.EXEMPT_RCPTS_MAP}";$', conf, re.M)
    assert re.search(r"^expire = 3600;$", conf, re.M)  # the slowest bucket drains in an hour


def test_every_bucket_has_its_own_key_and_overrides_share_it(tmp_path: Path) -> None:
    """Rspamd keys a bucket by its selector's value alone: each counter's selector starts with its own
    name, so no two counters share a bucket, and an override's rule keys the same bucket as the rule it
    replaces (a raised limit applies to the bucket already filled)."""
    found = limits.rules(_load(tmp_path, mail_list=OVERRIDES))
    by_name = {r.name: r for r in found}
    assert sorted(by_name) == [
        "domain_messages",
        "domain_recipients",
        "domain_recipients:sams.test",
        "login_messages",
        "login_messages:alice@sams.test",
        "login_recipients",
    ]
    heads = {r.name: r.selector.split(";")[0] for r in found}
    assert heads["login_messages:alice@sams.test"] == heads["login_messages"] == "id('login_messages')"
    assert len({heads[n] for n in ("login_messages", "login_recipients", "domain_messages", "domain_recipients")}) == 4
    # The general rule leaves the overridden login out; the override takes only it.
    assert by_name["login_messages"].selector.endswith(".not_in('alice@sams.test')")
    assert by_name["login_messages:alice@sams.test"].selector.endswith(".in('alice@sams.test')")
    assert by_name["login_recipients"].selector == "id('login_recipients');user.lower"  # alice kept the default
    assert by_name["domain_recipients"].selector.endswith(".not_in('sams.test')")
    alice = by_name["login_messages:alice@sams.test"]
    assert (alice.rate.burst, alice.rate_text) == (20, "50 / 60s")
    assert alice.message.startswith("Sending limit reached for alice@sams.test: 20 messages at once, then 50 per 1m.")
    assert by_name["domain_recipients:sams.test"].rate.burst == 3000


def test_no_text_breaks_the_reply_or_the_config(tmp_path: Path) -> None:
    """The text becomes the SMTP reply (no % for the milter's reply, no quotes for UCL)."""
    for rule in limits.rules(_load(tmp_path, mail_list=OVERRIDES)):
        for text in (rule.message, rule.selector, rule.name):
            assert not set(text) & set('"%\\\n'), text
        assert len(rule.message) < 400


def test_limits_off_leave_no_rule_and_no_map(tmp_path: Path) -> None:
    on = services.rspamd_step(_load(tmp_path))
    assert limits.EXEMPT_RCPTS_MAP in [f.path for f in on.files]
    assert limits.EXEMPT_RCPTS_MAP not in on.script
    off = services.rspamd_step(_load(tmp_path, {"sams:limits": {"enabled": False}}))
    conf = {f.path: f.content for f in off.files}["/etc/rspamd/local.d/ratelimit.conf"]
    assert re.search(r"^enabled = false;$", conf, re.M) and "rates" not in conf
    assert limits.EXEMPT_RCPTS_MAP not in [f.path for f in off.files]
    assert f"rm -f {limits.EXEMPT_RCPTS_MAP}" in off.script


def test_the_step_fails_on_a_rule_rspamd_would_drop(tmp_path: Path) -> None:
    script = services.rspamd_step(_load(tmp_path)).script
    assert '*"bad ratelimit"*' in script and "check=$(rspamadm configtest 2>&1)" in script


def test_limits_reload_only_rspamd(tmp_path: Path) -> None:
    step = services.rspamd_step(_load(tmp_path))
    for path in ("/etc/rspamd/local.d/ratelimit.conf", limits.EXEMPT_RCPTS_MAP):
        touched = {(s.unit, s.action) for s in step.services if any(fnmatch.fnmatch(path, w) for w in s.watches)}
        assert touched == {("rspamd", "reload")}, path


# --- what Postfix gets ---------------------------------------------------------------------------------


def test_outbound_pacing_is_off_by_default(tmp_path: Path) -> None:
    files = _files(_load(tmp_path))
    assert "transport_maps" not in files["/etc/postfix/main.cf"]
    assert "warmup" not in files["/etc/postfix/master.cf"]
    assert limits.WARMUP_TRANSPORT_MAP not in files
    step = services.postfix_step(_load(tmp_path))
    assert f"rm -f {limits.WARMUP_TRANSPORT_MAP}" in step.script  # what an earlier setting left goes


def test_outbound_pacing_for_listed_domains(tmp_path: Path) -> None:
    s = _load(tmp_path, {"sams:limits": {"outbound": {"domains": ["gmail.com", "outlook.com"], "delay": "5s"}}})
    files = _files(s)
    main = files["/etc/postfix/main.cf"]
    assert re.search(rf"^transport_maps = texthash:{limits.WARMUP_TRANSPORT_MAP}$", main, re.M)
    assert re.search(r"^warmup_destination_rate_delay = 5s$", main, re.M)
    master = files["/etc/postfix/master.cf"]
    assert re.search(r"^warmup +unix +- +- +y +- +- +smtp\n  -o syslog_name=postfix/warmup$", master, re.M)
    entries = [line for line in files[limits.WARMUP_TRANSPORT_MAP].splitlines() if not line.startswith("#")]
    assert entries == ["gmail.com warmup:", "outlook.com warmup:"]  # empty nexthop: the domain's MX hosts
    assert limits.WARMUP_TRANSPORT_MAP not in services.postfix_step(s).script
