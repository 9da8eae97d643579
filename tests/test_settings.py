"""Bad settings fail before any resource exists, with one error naming file, line, key and value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import mockrun
from settings import SettingsError, load

PROJECT = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path, mail_list: str | None = None) -> Path:
    """A copy of the project's stack files, with an optional replacement mail list."""
    for f in ("Pulumi.prod.yaml", "Pulumi.lab.yaml"):
        shutil.copy(PROJECT / f, tmp_path / f)
    for stack in ("prod", "lab"):
        (tmp_path / "stacks" / stack).mkdir(parents=True)
        text = mail_list if mail_list is not None else (PROJECT / "stacks" / stack / "mail_list.yml").read_text()
        (tmp_path / "stacks" / stack / "mail_list.yml").write_text(text)
    return tmp_path


def _load(tmp: Path, overrides: Any = None, stack: str = "prod") -> object:
    cfg = {**mockrun.stack_config(stack, PROJECT), **mockrun.TEST_SECRETS}
    cfg.update({k: mockrun.encode_config(v) for k, v in (overrides or {}).items()})
    return load(stack, cfg, tmp)


def _problem(exc: pytest.ExceptionInfo[SettingsError]) -> str:
    assert len(exc.value.problems) >= 1
    return str(exc.value)


def test_stack_files_are_valid() -> None:
    for stack in ("dev", "prod", "lab"):
        s = load(stack, {**mockrun.stack_config(stack), **mockrun.TEST_SECRETS}, PROJECT)
        assert s.mail.domains, stack


MAIL_LIST_CASES = {
    "invalid domain": (
        "domains:\n  - name: exa_mple.org\n    users: [alice]\n",
        "stacks/prod/mail_list.yml:2: domains[0].name = 'exa_mple.org': not a valid domain name",
    ),
    "duplicate user": (
        "domains:\n  - name: example.org\n    users:\n      - alice\n      - bob\n      - alice\n",
        "stacks/prod/mail_list.yml:6: domains[0].users[2].name = 'alice': user alice@example.org declared twice",
    ),
    "user in undeclared domain": (
        "domains:\n  - name: example.org\n    users:\n      - alice\n      - bob@elsewhere.net\n",
        "stacks/prod/mail_list.yml:5: domains[0].users[1] = 'bob@elsewhere.net': user is in domain 'elsewhere.net'",
    ),
    "alias to unknown local user": (
        "domains:\n  - name: example.org\n    users: [alice]\n    aliases:\n      - {name: sales, to: [bob]}\n",
        "stacks/prod/mail_list.yml:5: domains[0].aliases[0].to[0] = 'bob': no user or alias bob@example.org",
    ),
    "invalid local part": (
        "domains:\n  - name: example.org\n    users: [Alice+x]\n",
        "stacks/prod/mail_list.yml:3: domains[0].users[0].name = 'Alice+x': not a valid local part",
    ),
    "wrong type": (
        "domains:\n  - name: example.org\n    users:\n      - name: alice\n        quota: lots\n",
        "stacks/prod/mail_list.yml:5: domains[0].users[0].quota = 'lots': quota must be a size",
    ),
    "unknown key": (
        "domains:\n  - name: example.org\n    users:\n      - name: alice\n        qouta: 1G\n",
        "stacks/prod/mail_list.yml:5: domains[0].users[0].qouta = '1G': unknown key",
    ),
    "yaml syntax error": (
        "domains:\n  - name: example.org\n    users: [alice, bob\n",
        "stacks/prod/mail_list.yml:4: <yaml> = <missing>: YAML syntax error",
    ),
    "duplicate key": (
        "domains:\n  - name: example.org\n    name: example.net\n    users: [alice]\n",
        "stacks/prod/mail_list.yml:3: domains[0].name = 'name': key appears twice",
    ),
}


@pytest.mark.parametrize("case", sorted(MAIL_LIST_CASES))
def test_bad_mail_list(tmp_path: Path, case: str) -> None:
    text, expected = MAIL_LIST_CASES[case]
    with pytest.raises(SettingsError) as exc:
        _load(_project(tmp_path, text))
    assert expected in _problem(exc)


def test_a_domain_whose_last_user_left_keeps_an_empty_key(tmp_path: Path) -> None:
    """Deleting a domain's last mailbox (or alias) from the list leaves `users:` with nothing under
    it, which YAML reads as null: that is an empty list, not an error."""
    text = (
        "domains:\n  - name: example.org\n    users:\n      - alice\n  - name: example.net\n    users:\n    aliases:\n"
    )
    settings = _load(_project(tmp_path, text))
    (org, net) = settings.mail.domains  # type: ignore[attr-defined]
    assert [u.name for u in org.users] == ["alice"] and net.users == [] and net.aliases == []


CONFIG_CASES = {
    "overlapping cidr": (
        {
            "sams:wireguard": {
                "network": "172.17.8.0/24",
                "address": "172.17.8.2",
                "hubAddress": "172.17.8.1",
                "hubPublicKey": "fb3dHqmVtX0RZKX/D1ku1XHZSyDfmmdcU6EMSh60DH4=",
            }
        },
        "Pulumi.prod.yaml:14: sams:wireguard.network = '172.17.8.0/24': overlaps Docker's bridge network",
    ),
    "unknown key": ({"sams:hostnmae": "x"}, "sams:hostnmae = 'x': unknown key"),
    "wrong type": ({"sams:publicWeb": "maybe"}, "sams:publicWeb = 'maybe': Input should be a valid boolean"),
    "bad provider": (
        {"sams:provider": "aws"},
        "Pulumi.prod.yaml:4: sams:provider = 'aws': Input should be 'vultr', 'oci' or 'existing'",
    ),
    "missing provider section": (
        {"sams:provider": "existing"},
        "sams:existing = None: provider is 'existing' but this section is missing",
    ),
    "unknown password scheme": (
        {"sams:users": {"passwordScheme": "MD5-CRYPT"}},
        "sams:users.passwordScheme = 'MD5-CRYPT': Input should be 'SHA512-CRYPT' or 'ARGON2ID'",
    ),
    "bad ssh key": ({"sams:adminSshKeys": ["ssh-rsa"]}, "sams:adminSshKeys[0] = 'ssh-rsa': not an OpenSSH public key"),
    "private CA without its CAA issuer": (
        {"sams:acme": {"directory": "https://acme.internal.example/dir"}},
        "sams:acme.caaIssuers = ['letsencrypt.org']: acme.directory https://acme.internal.example/dir is not "
        "Let's Encrypt",
    ),
    "relay by address": (
        {"sams:relay": {"host": "198.51.100.7", "port": 587, "username": "u"}},
        "Pulumi.prod.yaml:23: sams:relay.host = '198.51.100.7': give the relay's name, not an address",
    ),
    "ClamAV on a 2 GB plan": (
        {"sams:antivirus": {"clamav": True}},
        "Pulumi.prod.yaml:10: sams:vultr.plan = 'vc2-1c-2gb': has 2 GB of memory, but antivirus.clamav needs "
        "at least 3",
    ),
    "hostname outside domains": (
        {"sams:hostname": "mx.other.example"},
        "sams:hostname = 'mx.other.example': is in none of the mail list's domains",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config(tmp_path: Path, case: str) -> None:
    overrides, expected = CONFIG_CASES[case]
    with pytest.raises(SettingsError) as exc:
        _load(_project(tmp_path), overrides)
    assert expected in _problem(exc)


def test_clamav_is_off_by_default_and_fits_hosts_with_room_for_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert _load(project).config.antivirus.clamav is False  # type: ignore[attr-defined]
    on = {"sams:antivirus": {"clamav": True}}
    four_gb = {"sams:vultr": {"osId": 2625, "plan": "vc2-2c-4gb"}}
    assert _load(project, {**on, **four_gb}).config.antivirus.clamav  # type: ignore[attr-defined]
    # An existing host's memory is not in the stack: nothing to check.
    assert _load(project, on, stack="lab").config.antivirus.clamav  # type: ignore[attr-defined]
    # OCI: the shape's memoryGbs (the dev stack has 6).
    dev = {**mockrun.stack_config("dev", PROJECT), **mockrun.TEST_SECRETS, "sams:antivirus": '{"clamav": true}'}
    assert load("dev", dev, PROJECT).config.antivirus.clamav
    oci = json.loads(dev["sams:oci"])
    with pytest.raises(SettingsError) as exc:
        load("dev", {**dev, "sams:oci": json.dumps({**oci, "memoryGbs": 2})}, PROJECT)
    assert "sams:oci.memoryGbs = 2.0: has 2 GB of memory, but antivirus.clamav needs at least 3" in _problem(exc)


def test_too_many_domains_for_one_certificate(tmp_path: Path) -> None:
    many = "domains:\n" + "".join(f"  - name: d{i}.example.org\n    users: [u]\n" for i in range(34))
    project = _project(tmp_path, many + "  - name: example.org\n    users: [admin]\n")
    with pytest.raises(SettingsError) as exc:
        _load(project)
    assert "sams:publicWeb = True: 35 domains need 106 names on the one certificate" in _problem(exc)
    # Without web hosts (certificates by DNS-01) the same list is fine.
    _load(project, {"sams:publicWeb": False, "sams:acme": {"challenge": "dns-01-cloudflare"}})


def test_relay_user_needs_a_password(tmp_path: Path) -> None:
    cfg = mockrun.stack_config("prod", PROJECT)  # relay with a username, and no secret set
    with pytest.raises(SettingsError) as exc:
        load("prod", cfg, _project(tmp_path))
    assert "Pulumi.prod.yaml:3: sams:relayPassword = <missing>: required when sams:relay.username is set" in str(
        exc.value
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = "domains:\n  - name: example.org\n    users: [alice, alice]\n    aliases:\n      - {name: alice, to: [x]}\n"
    with pytest.raises(SettingsError) as exc:
        _load(_project(tmp_path, text))
    messages = [p.message for p in exc.value.problems]
    assert len(messages) >= 3, messages


def test_program_registers_nothing_when_settings_are_bad(tmp_path: Path) -> None:
    """The loader runs first in __main__.py: a bad list means not a single resource."""
    project = _project(tmp_path, "domains:\n  - name: example.org\n    users: [alice, alice]\n")
    shutil.copy(PROJECT / "__main__.py", project / "__main__.py")
    registered: list[object] = []
    monitor_cls = mockrun.RecordingMonitor
    original = monitor_cls.RegisterResource

    def spy(self: mockrun.RecordingMonitor, request: object) -> object:
        if getattr(request, "type", "") != "pulumi:pulumi:Stack":  # the engine's own root
            registered.append(request)
        return original(self, request)

    monitor_cls.RegisterResource = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(SettingsError, match="declared twice"):
            mockrun.run("prod", project_dir=project, secret_config=mockrun.TEST_SECRETS)
    finally:
        monitor_cls.RegisterResource = original  # type: ignore[method-assign]
    assert registered == []


def test_quota_and_shorthand() -> None:
    s = load("prod", {**mockrun.stack_config("prod"), **mockrun.TEST_SECRETS}, PROJECT)
    bob = next(u for d, u in s.mail.mailboxes if u.name == "bob")
    carol = next(u for d, u in s.mail.mailboxes if u.name == "carol")
    assert s.mail.quota_of(bob) == 10 * 1024**3
    assert s.mail.quota_of(carol) == 5 * 1024**3


def test_secret_keys_are_not_settings() -> None:
    cfg = {**mockrun.stack_config("prod"), **mockrun.TEST_SECRETS}
    cfg["sams:sshPrivateKey"] = json.dumps("-----BEGIN OPENSSH PRIVATE KEY-----")
    s = load("prod", cfg, PROJECT)
    assert "PRIVATE" not in repr(s)
