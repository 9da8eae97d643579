"""The backup step as the program stages it: before the database, secrets only as late values,
root-only files, a shellcheck-clean script, the new-host restore guarded, and backups off cleaning up."""

from __future__ import annotations

import json
from typing import Any

import pytest

import mockrun
from components.backup.plan import (
    CONFIG_FILE,
    COPY_ENV_FILE,
    COPY_UNIT,
    ENV_FILE,
    KNOWN_HOSTS_FILE,
    PASSWORD_FILE,
    SNAPSHOT_PATHS,
    SSH_CONFIG_FILE,
    SSH_KEY_FILE,
    UNIT,
)
from components.backup.steps import backup_step
from components.database.steps import WAL_ARCHIVE
from components.mail.services import VMAIL_ROOT
from settings import load
from tests.conftest import PROJECT

REST = "rest:https://backup.example.org:8000/sams/"


def settings_with(stack: str, backup: dict[str, Any]) -> Any:
    cfg = {**mockrun.stack_config(stack), **mockrun.TEST_SECRETS, "sams:backup": json.dumps(backup)}
    return load(stack, cfg, PROJECT)


def test_the_backup_step_runs_before_the_database(runner: Any) -> None:
    """On a new host the snapshot must be back before PostgreSQL first starts (and Postfix and
    Dovecot exist): registration order is the apply order."""
    names = [c.name for c in runner("prod").of_type("command:remote:Command")]
    assert (
        names.index("backup-backup-apply") < names.index("database-postgres-apply") < names.index("mail-postfix-apply")
    )


def test_secrets_reach_the_host_only_on_stdin(runner: Any) -> None:
    run = runner("lab")
    command = next(c for c in run.of_type("command:remote:Command") if c.name == "backup-backup-apply")
    assert command.is_secret("stdin")
    spec = backup_step(settings_with("lab", {"enabled": True, "repository": REST}))
    files = {f.path: f for f in spec.files}
    assert files[PASSWORD_FILE].content == "@@SAMS_LATE:backup_password@@"
    assert files[PASSWORD_FILE].mode == files[ENV_FILE].mode == "0600"
    assert files[ENV_FILE].content == (
        "RESTIC_REST_USERNAME=@@SAMS_LATE:backup_key_id@@\nRESTIC_REST_PASSWORD=@@SAMS_LATE:backup_key_secret@@\n"
    )
    config = json.loads(files[CONFIG_FILE].content)
    # The URL too, so a program-created bucket's (known only once it exists) takes the same path.
    assert config["repository"] == "@@SAMS_LATE:backup_repository@@"
    assert set(spec.late_values) == {"backup_password", "backup_repository", "backup_key_id", "backup_key_secret"}


def test_s3_repositories_take_aws_variables() -> None:
    spec = backup_step(
        load(
            "lab",
            {
                **mockrun.stack_config("lab"),
                "sams:backup": json.dumps({"enabled": True, "repository": "s3:https://s3.example.org/sams"}),
                "sams:backupKeyId": "id",
                "sams:backupKeySecret": "secret",
            },
            PROJECT,
        )
    )
    env = next(f for f in spec.files if f.path == ENV_FILE).content
    assert env.startswith("AWS_ACCESS_KEY_ID=@@SAMS_LATE:backup_key_id@@\nAWS_SECRET_ACCESS_KEY=")


def test_a_snapshot_holds_the_mail_the_wal_and_the_certificates() -> None:
    assert {VMAIL_ROOT, WAL_ARCHIVE, "/etc/letsencrypt", "/var/mail/archive"} <= set(SNAPSHOT_PATHS)


def test_a_snapshot_holds_the_webmail_data_and_the_calendars() -> None:
    """Issue 23 item 7: what is neither Maildir nor PostgreSQL; Radicale is stopped around a restore."""
    from components.hostpaths import DAV_COLLECTIONS, WEBMAIL_DATA_DIR

    assert {WEBMAIL_DATA_DIR, DAV_COLLECTIONS} <= set(SNAPSHOT_PATHS)
    spec = backup_step(settings_with("lab", {"enabled": True, "repository": REST}))
    config = json.loads(next(f for f in spec.files if f.path == CONFIG_FILE).content)
    assert {WEBMAIL_DATA_DIR, DAV_COLLECTIONS} <= set(config["paths"])
    assert config["data_units"] == ["radicale.service"]


def test_the_timer_follows_the_schedule() -> None:
    spec = backup_step(
        settings_with(
            "lab", {"enabled": True, "repository": REST, "schedule": "*-*-* 04:15:00", "randomizedDelay": "20m"}
        )
    )
    timer = next(f for f in spec.files if f.path == f"/etc/systemd/system/{UNIT}.timer").content
    assert "OnCalendar=*-*-* 04:15:00\n" in timer and "RandomizedDelaySec=20m\n" in timer
    service = next(f for f in spec.files if f.path == f"/etc/systemd/system/{UNIT}.service").content
    assert "Nice=19" in service and "IOSchedulingPriority=7" in service


def test_restore_only_on_a_new_host() -> None:
    plain = backup_step(settings_with("lab", {"enabled": True, "repository": REST}))
    assert "restore-host" not in plain.script
    spec = backup_step(settings_with("lab", {"enabled": True, "repository": REST, "restore": "latest"}))
    assert "restore-host --if-new --snapshot latest" in spec.script
    # Restored before the timer is enabled, so no run can back up a half-restored host.
    assert spec.script.index("restore-host") < spec.script.index("enable --now")


def test_backups_off_remove_the_timer_and_the_secrets() -> None:
    spec = backup_step(settings_with("lab", {"enabled": False}))
    assert spec.files == () and spec.late_values == ()
    assert f"systemctl disable --now {UNIT}.timer" in spec.script
    assert f"rm -f {PASSWORD_FILE} {ENV_FILE}" in spec.script


def test_a_second_copy_has_its_own_timer_and_credential() -> None:
    cfg = {
        **mockrun.stack_config("lab"),
        "sams:backup": json.dumps(
            {"enabled": True, "repository": REST, "copyTo": {"repository": "s3:https://s3.example.org/archive"}}
        ),
    }
    spec = backup_step(load("lab", cfg, PROJECT))
    files = {f.path: f for f in spec.files}
    assert files[COPY_ENV_FILE].mode == "0600"
    assert files[COPY_ENV_FILE].content.startswith("AWS_ACCESS_KEY_ID=@@SAMS_LATE:backup_copy_key_id@@")
    assert "OnCalendar=monthly" in files[f"/etc/systemd/system/{COPY_UNIT}.timer"].content
    assert json.loads(files[CONFIG_FILE].content)["copy"]["repository"] == "s3:https://s3.example.org/archive"
    assert f"systemctl enable --now {COPY_UNIT}.timer" in spec.script
    # Without a copy an earlier one's timer and credential go.
    plain = backup_step(settings_with("lab", {"enabled": True, "repository": REST}))
    assert f"systemctl disable --now {COPY_UNIT}.timer" in plain.script and f"rm -f {COPY_ENV_FILE}" in plain.script


def test_two_s3_repositories_cannot_be_copied_between() -> None:
    from settings.errors import SettingsError

    cfg = {
        **mockrun.stack_config("lab"),
        "sams:backup": json.dumps(
            {
                "enabled": True,
                "repository": "s3:https://s3.example.org/main",
                "copyTo": {"repository": "s3:https://s3.example.org/archive"},
            }
        ),
        "sams:backupKeyId": "id",
        "sams:backupKeySecret": "secret",
    }
    with pytest.raises(SettingsError) as caught:
        load("lab", cfg, PROJECT)
    assert "sams:backup.copyTo.repository = 's3:https://s3.example.org/archive'" in str(caught.value)
    assert "one S3 key" in str(caught.value)


SFTP = "sftp://backup@backup.example.org:2222//srv/restic/sams"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q root@backup"


def test_an_sftp_repository_pins_its_server_and_keeps_its_key_root_only() -> None:
    """The host's SSH key arrives on stdin into a 0600 file; ssh accepts only the pinned host key
    (the [host]:port form off port 22), never prompts, and restic's ssh reads SAMS's config."""
    spec = backup_step(settings_with("lab", {"enabled": True, "repository": SFTP, "sftpHostKey": HOST_KEY}))
    files = {f.path: f for f in spec.files}
    assert files[SSH_KEY_FILE].content == "@@SAMS_LATE:backup_ssh_key@@" and files[SSH_KEY_FILE].mode == "0600"
    assert "backup_ssh_key" in spec.late_values
    # The comment of the pasted line is not part of the pin.
    assert files[KNOWN_HOSTS_FILE].content == f"[backup.example.org]:2222 {' '.join(HOST_KEY.split()[:2])}\n"
    ssh = files[SSH_CONFIG_FILE].content
    for line in (
        f"IdentityFile {SSH_KEY_FILE}",
        f"UserKnownHostsFile {KNOWN_HOSTS_FILE}",
        "StrictHostKeyChecking yes",
        "BatchMode yes",
        "IdentitiesOnly yes",
        "GlobalKnownHostsFile /dev/null",
    ):
        assert f"    {line}\n" in ssh, line
    assert json.loads(files[CONFIG_FILE].content)["ssh_config"] == SSH_CONFIG_FILE
    assert files[ENV_FILE].content == ""  # no credential in the environment: the key is the login
    assert "installed openssh-client" in spec.script
    assert f"rm -f {SSH_KEY_FILE}" not in spec.script


def test_leaving_sftp_or_backups_removes_the_key_and_pins() -> None:
    rest = backup_step(settings_with("lab", {"enabled": True, "repository": REST}))
    assert f"rm -f {SSH_KEY_FILE} {KNOWN_HOSTS_FILE} {SSH_CONFIG_FILE}" in rest.script
    assert json.loads(next(f for f in rest.files if f.path == CONFIG_FILE).content)["ssh_config"] is None
    off = backup_step(settings_with("lab", {"enabled": False}))
    assert all(path in off.script for path in (SSH_KEY_FILE, KNOWN_HOSTS_FILE, SSH_CONFIG_FILE))


def test_an_sftp_copy_is_pinned_beside_the_primary() -> None:
    backup = {
        "enabled": True,
        "repository": "sftp:backup@b1.example.org:/srv/sams",
        "sftpHostKey": HOST_KEY,
        "copyTo": {
            "repository": "sftp://archive@b2.example.org:23/sams",
            "sftpHostKey": HOST_KEY.replace("IK0", "IK1"),
        },
    }
    spec = backup_step(settings_with("lab", backup))
    pins = next(f for f in spec.files if f.path == KNOWN_HOSTS_FILE).content.splitlines()
    assert [p.split()[0] for p in pins] == ["b1.example.org", "[b2.example.org]:23"]
    assert next(f for f in spec.files if f.path == COPY_ENV_FILE).content == ""


def test_the_program_makes_the_sftp_key_and_exports_its_public_half() -> None:
    backup = {"enabled": True, "repository": SFTP, "sftpHostKey": HOST_KEY}
    run = mockrun.run("lab", config={**mockrun.stack_config("lab"), "sams:backup": json.dumps(backup)})
    public = run.outputs["backup"]["sshPublicKey"]
    assert public.startswith("ssh-ed25519 ") and public.endswith(" sams-backup@mail.sams.test"), public
    key = next(r for r in run.of_type("tls:index/privateKey:PrivateKey") if r.name == "backup-ssh")
    assert key.inputs["algorithm"] == "ED25519"
    command = next(c for c in run.of_type("command:remote:Command") if c.name == "backup-backup-apply")
    assert command.is_secret("stdin")
    # Without SFTP there is no such key.
    plain = mockrun.run("lab")
    assert plain.outputs["backup"]["sshPublicKey"] is None
    assert not [r for r in plain.of_type("tls:index/privateKey:PrivateKey") if r.name == "backup-ssh"]
