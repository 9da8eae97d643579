"""Bad settings fail before any resource exists, with one error naming file, line, key and value."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from datetime import timedelta
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
    "reserved zone resolved from the root": (
        {"sams:resolver": {"reservedZones": ["test"]}},
        "sams:resolver.reservedZones = ['test']: resolving from the root finds nothing under a special-use name",
    ),
    "reserved zone that is not one": (
        {"sams:resolver": {"forwarders": ["198.51.100.53"], "reservedZones": ["example"]}},
        "sams:resolver.reservedZones[0] = 'example': Input should be 'test' or 'home.arpa'",
    ),
    "public webmail without publicWeb": (
        {
            "sams:webmail": {"exposure": "public"},
            "sams:publicWeb": False,
            "sams:acme": {"challenge": "dns-01-cloudflare"},
        },
        "sams:webmail.exposure = 'public': public webmail is served on port 443 of the public address",
    ),
    "unknown webmail exposure": (
        {"sams:webmail": {"exposure": "internet"}},
        "sams:webmail.exposure = 'internet': Input should be 'vpn' or 'public'",
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


# --- sams:backup (settings/stack.py BackupSettings, settings/checks.py) ---------------------------------


def _with_backup(tmp_path: Path, body: str, stack: str = "prod") -> tuple[Path, Path]:
    """The project copy with the stack file's `sams:backup:` section replaced by `body` (its keys, as
    written under the section): errors then point at the line the bad value is on."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    project = _project(tmp_path)
    path = project / f"Pulumi.{stack}.yaml"
    out, inside = [], False
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("  sams:backup:"):
            inside = True
            continue
        if inside and (line.startswith("    ") or not line.strip()):
            continue
        inside = False
        out.append(line)
    path.write_text("".join(out) + "  sams:backup:\n" + textwrap.indent(body, "    "))
    return project, path


def _load_backup(project: Path, stack: str = "prod", **secrets: str) -> Any:
    cfg = {**mockrun.stack_config(stack, project), **mockrun.TEST_SECRETS}
    cfg.update({f"sams:{k}": v for k, v in secrets.items()})
    return load(stack, cfg, project).config.backup


def _where(path: Path, text: str) -> str:
    """'Pulumi.prod.yaml:N' for the one line of `path` that starts with `text` (comments aside)."""
    (n,) = [i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(text)]
    return f"{path.name}:{n}"


def _backup_problems(project: Path, stack: str = "prod", **secrets: str) -> list[str]:
    with pytest.raises(SettingsError) as exc:
        _load_backup(project, stack, **secrets)
    return [str(p) for p in exc.value.problems]


def test_backup_defaults(tmp_path: Path) -> None:
    """Nightly at 02:30 UTC within the hour after; 7 daily, 5 weekly and 12 monthly snapshots kept;
    on Sundays restic check reads a tenth of the data back."""
    project, _ = _with_backup(tmp_path, "enabled: true\nrepository: rest:https://backup.example.org:8000/sams/\n")
    b = _load_backup(project)
    assert b.enabled and b.repository == "rest:https://backup.example.org:8000/sams/"
    assert (b.keep.daily, b.keep.weekly, b.keep.monthly) == (7, 5, 12)
    assert (b.schedule, b.randomized_delay) == ("*-*-* 02:30:00", timedelta(hours=1))
    assert (b.read_data_on, b.read_data_subset) == ("Sun", "10%")
    assert b.forget is True and b.restore is None and b.server_ca is None and b.copy_to is None
    # A stack without the section has backups off.
    dev = load("dev", {**mockrun.stack_config("dev", PROJECT), **mockrun.TEST_SECRETS}, PROJECT).config.backup
    assert dev.enabled is False and dev.repository is None


def test_backup_settings_written_out(tmp_path: Path) -> None:
    body = (
        "enabled: true\n"
        "repository: rest:https://backup.example.org:8000/sams/\n"
        "schedule: Sun *-*-* 03:00\n"
        "randomizedDelay: 90m\n"
        "keep: {daily: 14, weekly: 0, monthly: 24}\n"
        "readDataSubset: 1/5\n"
        "readDataOn: Wed\n"
        "restore: 4f3c2a1b\n"
    )
    project, _ = _with_backup(tmp_path, body)
    b = _load_backup(project)
    assert (b.schedule, b.randomized_delay, b.read_data_subset, b.read_data_on) == (
        "Sun *-*-* 03:00",
        timedelta(minutes=90),
        "1/5",
        "Wed",
    )
    assert (b.keep.daily, b.keep.weekly, b.keep.monthly, b.restore) == (14, 0, 24, "4f3c2a1b")
    for i, schedule in enumerate(("daily", "*-*-* 02:30", "Sat *-*-* 23:15:00")):
        project, _ = _with_backup(tmp_path / str(i), f"schedule: '{schedule}'\n")
        assert _load_backup(project).schedule == schedule


# Not calendar specs at all, and one that would smuggle a second line into the timer unit.
@pytest.mark.parametrize("schedule", ["every night", "", "at 2:30 each day", "*-*-* 02:30\nOnCalendar=minutely"])
def test_bad_backup_schedule(tmp_path: Path, schedule: str) -> None:
    project, path = _with_backup(tmp_path, f"enabled: true\nschedule: {json.dumps(schedule)}\n")
    (problem,) = _backup_problems(project)
    assert problem.startswith(f"{_where(path, 'schedule:')}: sams:backup.schedule = {schedule!r}: "), problem


@pytest.mark.parametrize(
    "repository",
    [
        "rest:https://backup.example.org:8000/sams/",
        "rest:http://10.100.0.1:8000/sams/",
        "s3:https://s3.example.org/bucket",
        "s3:https://fra1.vultrobjects.com/sams-backup/prod",
    ],
)
def test_backup_repository_accepted(tmp_path: Path, repository: str) -> None:
    project, _ = _with_backup(tmp_path, f"enabled: true\nrepository: {repository}\n")
    assert _load_backup(project, backupKeyId="AKIA-TEST", backupKeySecret="secret").repository == repository


@pytest.mark.parametrize(
    "repository",
    [
        "sftp:backup.example.org:/srv/sams",  # no login: restic would log in as root's name
        "sftp://backup:hunter2@backup.example.org/sams",  # a password in the stack file
        "sftp:backup@backup.example.org",  # no path
        "rest:https://sams:hunter2@backup.example.org:8000/sams/",  # credentials belong in the secrets
        "s3:https://s3.example.org",  # no bucket
        "/srv/backup",  # a local repository is on the disk it should survive
        "b2:bucket:path",
    ],
)
def test_bad_backup_repository(tmp_path: Path, repository: str) -> None:
    project, path = _with_backup(tmp_path, f"enabled: true\nrepository: '{repository}'\n")
    (problem,) = _backup_problems(project)
    assert problem.startswith(f"{_where(path, 'repository:')}: sams:backup.repository = {repository!r}: "), problem


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q"


@pytest.mark.parametrize(
    "repository",
    [
        "sftp:backup@backup.example.org:/srv/sams",
        "sftp:backup@backup.example.org:sams",
        "sftp://backup@backup.example.org:2222//srv/sams",
        "sftp://backup@[2001:db8::5]:2222/sams",
    ],
)
def test_an_sftp_repository_with_its_pinned_host_key(tmp_path: Path, repository: str) -> None:
    project, _ = _with_backup(tmp_path, f"enabled: true\nrepository: '{repository}'\nsftpHostKey: {HOST_KEY} root@b\n")
    b = _load_backup(project)
    assert b.repository == repository and b.sftp_host_key == f"{HOST_KEY} root@b"


def test_an_sftp_repository_needs_its_host_key(tmp_path: Path) -> None:
    """Without a pinned key the host would trust whatever answers on the name: refused, saying how to get it."""
    project, path = _with_backup(tmp_path, "enabled: true\nrepository: sftp:backup@backup.example.org:/srv/sams\n")
    (problem,) = _backup_problems(project)
    assert problem.startswith(f"{_where(path, 'sams:backup:')}: sams:backup.sftpHostKey = <missing>: "), problem
    assert "ssh-keyscan" in problem and "ssh_host_ed25519_key.pub" in problem, problem


def test_a_host_key_without_sftp_and_a_bad_one_are_refused(tmp_path: Path) -> None:
    project, path = _with_backup(
        tmp_path, f"enabled: true\nrepository: rest:https://b.example.org/x/\nsftpHostKey: {HOST_KEY}\n"
    )
    (problem,) = _backup_problems(project)
    assert problem.startswith(f"{_where(path, 'sftpHostKey:')}: sams:backup.sftpHostKey = {HOST_KEY!r}: "), problem
    assert "only for an sftp: repository" in problem
    project, path = _with_backup(
        tmp_path / "bad", "enabled: true\nrepository: sftp:b@b.example.org:/x\nsftpHostKey: AAAAC3Nz\n"
    )
    (problem,) = _backup_problems(project)
    assert problem.startswith(f"{_where(path, 'sftpHostKey:')}: sams:backup.sftpHostKey = 'AAAAC3Nz': "), problem


def test_an_sftp_copy_needs_its_own_host_key(tmp_path: Path) -> None:
    body = (
        "enabled: true\nrepository: rest:https://b.example.org/x/\n"
        "copyTo:\n  repository: sftp://archive@cold.example.org:23/sams\n"
    )
    project, path = _with_backup(tmp_path, body)
    (problem,) = _backup_problems(project)
    assert problem.startswith(f"{_where(path, 'copyTo:')}: sams:backup.copyTo.sftpHostKey = <missing>: "), problem
    project, _ = _with_backup(tmp_path / "ok", body + f"  sftpHostKey: {HOST_KEY}\n")
    assert _load_backup(project).copy_to.sftp_host_key == HOST_KEY


def test_an_s3_repository_needs_its_access_key(tmp_path: Path) -> None:
    project, _ = _with_backup(tmp_path, "enabled: true\nrepository: s3:https://s3.example.org/bucket\n")
    problems = _backup_problems(project)
    assert [p.split(": required", 1)[0] for p in problems] == [
        "Pulumi.prod.yaml:3: sams:backupKeyId = <missing>",
        "Pulumi.prod.yaml:3: sams:backupKeySecret = <missing>",
    ]
    assert all("pulumi config set --secret" in p for p in problems)


@pytest.mark.parametrize("restore", ["snap-1", "4f3c2a1", "LATEST", "4F3C2A1B"])
def test_bad_backup_restore_id(tmp_path: Path, restore: str) -> None:
    project, path = _with_backup(tmp_path, f"enabled: true\nrestore: '{restore}'\n")
    (problem,) = _backup_problems(project)
    assert problem.startswith(f"{_where(path, 'restore:')}: sams:backup.restore = {restore!r}: "), problem


def test_backup_restore_needs_backups_enabled(tmp_path: Path) -> None:
    project, path = _with_backup(tmp_path, "enabled: false\nrestore: latest\n")
    assert _backup_problems(project) == [
        f"{_where(path, 'restore:')}: sams:backup.restore = 'latest': "
        "restoring needs the repository: set backup.enabled"
    ]
    project, _ = _with_backup(tmp_path / "on", "enabled: true\nrestore: latest\n")
    assert _load_backup(project).restore == "latest"


def test_an_existing_host_needs_a_repository(tmp_path: Path) -> None:
    """Provider existing has no object storage the program could make a bucket in; Vultr and OCI have."""
    project, path = _with_backup(tmp_path, "enabled: true\n", stack="lab")
    (problem,) = _backup_problems(project, stack="lab")
    assert problem.startswith(f"{_where(path, 'sams:backup:')}: sams:backup.repository = None: backup.enabled is true")
    assert "provider existing" in problem and "name a restic repository" in problem
    project, _ = _with_backup(tmp_path / "off", "enabled: false\n", stack="lab")
    assert _load_backup(project, stack="lab").enabled is False
    project, _ = _with_backup(tmp_path / "vultr", "enabled: true\n")
    assert _load_backup(project).repository is None  # the program's bucket on Vultr


def test_bad_backup_values_are_each_named(tmp_path: Path) -> None:
    body = "enabled: true\nrandomizedDelay: 1 hour\nkeep:\n  daily: 0\nreadDataSubset: 150%\nreadDataOn: Sunday\n"
    project, path = _with_backup(tmp_path, body)
    problems = _backup_problems(project)
    assert len(problems) == 4, problems
    for key, line, shown, message in (
        ("randomizedDelay", "randomizedDelay:", "'1 hour'", "not a duration: write a number and a unit"),
        ("keep.daily", "daily: 0", "0", "Input should be greater than or equal to 1"),
        ("readDataSubset", "readDataSubset:", "'150%'", ""),
        ("readDataOn", "readDataOn:", "'Sunday'", "Input should be 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat' or 'Sun'"),
    ):
        start = f"{_where(path, line)}: sams:backup.{key} = {shown}: {message}"
        assert any(p.startswith(start) for p in problems), (start, problems)


def test_the_old_backup_keys_are_refused(tmp_path: Path) -> None:
    """sams:backup.target and retentionDays are gone (repository and keep replace them): a stack file that
    still has them is told so, not silently given defaults."""
    body = "enabled: true\ntarget: sftp://backup@backup.example.org/sams\nretentionDays: 30\n"
    project, path = _with_backup(tmp_path, body)
    assert _backup_problems(project) == [
        f"{_where(path, 'target:')}: sams:backup.target = 'sftp://backup@backup.example.org/sams': unknown key "
        "(check its spelling; keys are listed in docs/settings.md)",
        f"{_where(path, 'retentionDays:')}: sams:backup.retentionDays = 30: unknown key "
        "(check its spelling; keys are listed in docs/settings.md)",
    ]


# --- the tools' stack reader (settings/stackfile.py) ---------------------------------------------------

SHIPPED_STACKS = sorted(p.name.split(".")[1] for p in PROJECT.glob("Pulumi.*.yaml"))


@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_tools_read_every_shipped_stack_without_its_secrets(stack: str) -> None:
    """The stack files hold no decryptable secret; the tools' reader validates everything else."""
    from settings.stackfile import read_stack, stack_file_config

    s = read_stack(stack, PROJECT)
    assert s.stack == stack and s.mail.domains
    assert stack_file_config(stack, PROJECT) == mockrun.stack_config(stack)  # the one reader


def test_up_still_requires_the_secrets_a_stack_needs(tmp_path: Path) -> None:
    """Only the tools skip the secret checks: the program's own load still names a missing one."""
    project, _ = _with_backup(tmp_path, "enabled: true\nrepository: s3:https://s3.example.org/bucket\n")
    from settings.stackfile import read_stack

    assert read_stack("prod", project).config.backup.repository == "s3:https://s3.example.org/bucket"
    assert any("sams:backupKeyId = <missing>" in p for p in _backup_problems(project))


@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_password_rotation_reads_every_shipped_stack(stack: str) -> None:
    """`python -m components.users rotate --stack S` gets past the stack file on every shipped stack
    and asks only for what it really needs (Vault), not for the relay's or the backups' secrets."""
    from settings.stackfile import read_stack

    domain, user = read_stack(stack, PROJECT).mail.mailboxes[0]
    result = subprocess.run(
        [sys.executable, "-m", "components.users", "rotate", "--stack", stack, "--user", f"{user.name}@{domain.name}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "VAULT_TOKEN" in result.stderr and "sams:" + "relayPassword" not in result.stderr, result.stderr


def test_no_production_module_imports_the_test_harness() -> None:
    """mockrun (Pulumi's mock engine and its SDK internals) is for tests, the lab and the benchmarks."""
    harness = {"tests", "lab", "bench", "mockrun", ".venv"}
    offenders = []
    for path in PROJECT.rglob("*.py"):
        parts = path.relative_to(PROJECT).parts
        if parts[0] in harness or parts[0].startswith("."):
            continue
        if re.search(r"^\s*(import mockrun|from mockrun\b)", path.read_text(), re.M):
            offenders.append(str(path.relative_to(PROJECT)))
    assert offenders == []
