"""sams-backup's pure parts: which archived WAL a run may delete, Maildir identity, the check's schedule,
restic's times, picking snapshots. The real runs, restores and faults are lab tests
(lab/tests/test_backup_lab.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from components.backup.plan import sftp_server
from components.backup.steps import TOOL_SOURCE
from tests.scripts import load_script

tool = load_script("sams_backup", TOOL_SOURCE)


def test_wal_older_than_the_newest_base_backup_is_pruned_and_history_kept() -> None:
    names = [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000003",
        "000000010000000000000005",
        "000000010000000000000005.00000060.backup",
        "000000010000000000000006",
        "00000002.history",
        ".000000010000000000000007.tmp",
    ]
    assert tool.prunable_segments(names) == [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000003",
    ]


def test_without_a_base_backup_label_nothing_is_pruned() -> None:
    # A run whose base backup never reached the archive must not delete the only copy of the WAL.
    assert tool.prunable_segments(["000000010000000000000001", "000000010000000000000002"]) == []


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("1733330000.M1P2.mail:2,S", "1733330000.M1P2.mail"),
        ("1733330000.M1P2.mail,S=1234,W=1260:2,FS", "1733330000.M1P2.mail"),
        ("1733330000.M1P2.mail,S=1234", "1733330000.M1P2.mail"),
        ("1733330000.M1P2.mail", "1733330000.M1P2.mail"),
    ],
)
def test_a_message_is_the_same_whatever_its_flags(name: str, key: str) -> None:
    assert tool.maildir_key(name) == key


def test_data_is_read_back_only_on_the_configured_weekday() -> None:
    cfg = {"read_data_on": "Sun", "read_data_subset": "10%"}
    assert tool.check_args(cfg, dt.date(2026, 12, 6)) == ["check", "--read-data-subset=10%"]  # a Sunday
    assert tool.check_args(cfg, dt.date(2026, 12, 7)) == ["check"]


def test_restic_and_cli_times_parse_as_utc() -> None:
    assert tool.parse_time("2026-12-04T18:31:03.05216409Z") == dt.datetime(2026, 12, 4, 18, 31, 3, 52164, dt.UTC)
    assert tool.parse_time("2026-12-04 18:31:03") == dt.datetime(2026, 12, 4, 18, 31, 3, tzinfo=dt.UTC)
    assert tool.parse_time("2026-12-04T19:31:03+01:00") == dt.datetime(2026, 12, 4, 18, 31, 3, tzinfo=dt.UTC)


SNAPS = [
    {"id": "aa11" * 16, "short_id": "aa11aa11", "time": "2026-12-01T02:30:00Z", "tags": ["sams", "run:1", "files"]},
    {"id": "bb22" * 16, "short_id": "bb22bb22", "time": "2026-12-02T02:30:00Z", "tags": ["sams", "run:2", "files"]},
]
BASES = [
    {"id": "cc33" * 16, "short_id": "cc33cc33", "time": "2026-12-01T02:29:00Z", "tags": ["sams", "run:1", "postgres"]},
]


def test_pick_latest_by_id_and_refuses_what_is_not_there() -> None:
    assert tool.pick(SNAPS, None, "files", "rest:x")["short_id"] == "bb22bb22"
    assert tool.pick(SNAPS, "latest", "files", "rest:x")["short_id"] == "bb22bb22"
    assert tool.pick(SNAPS, "aa11aa11", "files", "rest:x")["short_id"] == "aa11aa11"
    with pytest.raises(tool.Failure, match="no files snapshot deadbeef in rest:x"):
        tool.pick(SNAPS, "deadbeef", "files", "rest:x")
    with pytest.raises(tool.Failure, match="no files snapshot in rest:x"):
        tool.pick([], None, "files", "rest:x")


def test_a_files_snapshot_restores_with_the_database_of_its_own_run() -> None:
    assert tool.partner(SNAPS[0], BASES, "postgres")["short_id"] == "cc33cc33"
    with pytest.raises(tool.Failure, match=r"bb22bb22 has no postgres snapshot from the same run \(run:2\)"):
        tool.partner(SNAPS[1], BASES, "postgres")


def cfg(tmp_path: Path) -> dict[str, Any]:
    return {"status_file": str(tmp_path / "status.json")}


def test_a_failed_run_keeps_the_last_success(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    tool.write_status(c, {"result": "ok", "last_success": "2026-12-03T02:40:00Z", "last_success_snapshots": {"a": 1}})
    tool.write_status(c, {"result": "failed", "message": "restic backup failed on rest:x"})
    record = json.loads(Path(c["status_file"]).read_text())
    assert record["result"] == "failed"
    assert record["last_success"] == "2026-12-03T02:40:00Z"
    assert record["last_success_snapshots"] == {"a": 1}
    assert Path(c["status_file"]).stat().st_mode & 0o777 == 0o644


def test_credentials_never_reach_a_message_or_the_status(tmp_path: Path) -> None:
    c = {
        "repository": "rest:https://sams:hunter2@backup.example.org:8000/sams/",
        "env_file": str(tmp_path / "env"),
        "password_file": str(tmp_path / "password"),
        "cache_dir": str(tmp_path),
    }
    restic = tool.Restic(c)
    assert restic.repository == "rest:https://backup.example.org:8000/sams/"
    assert restic.env["RESTIC_REPOSITORY"] == c["repository"]  # restic itself still gets the login


def test_env_file_lines(tmp_path: Path) -> None:
    f = tmp_path / "env"
    f.write_text("AWS_ACCESS_KEY_ID=abc\nAWS_SECRET_ACCESS_KEY=x=y/z\n\n# comment\n")
    assert tool.read_env_file(f) == {"AWS_ACCESS_KEY_ID": "abc", "AWS_SECRET_ACCESS_KEY": "x=y/z"}


def test_for_a_copy_rest_logins_move_into_their_urls_and_s3_keys_stay() -> None:
    """Two repositories in one restic: the environment holds one login, so a rest-server's goes into
    its URL (escaped), an S3 key stays in the environment."""
    login = {"RESTIC_REST_USERNAME": "sams", "RESTIC_REST_PASSWORD": "p@ss/word"}
    url, env = tool.with_login("rest:https://backup.example.org:8000/sams/", login)
    assert (url, env) == ("rest:https://sams:p%40ss%2Fword@backup.example.org:8000/sams/", {})
    keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    assert tool.with_login("s3:https://s3.example.org/archive", keys) == ("s3:https://s3.example.org/archive", keys)


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("rest:https://backup.example.org:8000/sams/", ("backup.example.org", 8000)),
        ("rest:https://sams:pw@backup.example.org/sams/", ("backup.example.org", 443)),
        ("s3:https://s3.example.org/bucket/path", ("s3.example.org", 443)),
        ("s3:http://127.0.0.1:9000/bucket", ("127.0.0.1", 9000)),
        ("sftp:backup@backup.example.org:/srv/sams", ("backup.example.org", 22)),
        ("sftp:backup@backup.example.org:sams", ("backup.example.org", 22)),
        ("sftp://backup@backup.example.org:2222//srv/sams", ("backup.example.org", 2222)),
        ("sftp://backup@[2001:db8::5]/sams", ("2001:db8::5", 22)),
        ("sftp:backup@[2001:db8::5]:/srv/sams", ("2001:db8::5", 22)),
        ("/srv/restic", ("", 0)),
    ],
)
def test_the_server_a_repository_lives_on(url: str, where: tuple[str, int]) -> None:
    assert tool.endpoint(url) == where
    if url.startswith("sftp:"):
        # The program's own reading of the URL (the pinned known_hosts line) names the same server.
        server = sftp_server(url)
        assert (server.host, server.port) == where


def test_an_sftp_login_name_stays_in_messages_and_a_password_never_does() -> None:
    assert (
        tool.redact("sftp://backup@backup.example.org:2222//srv/sams")
        == "sftp://backup@backup.example.org:2222//srv/sams"
    )
    assert tool.redact("rest:https://sams:p%40ss@b.example.org/sams/") == "rest:https://b.example.org/sams/"


def test_restic_reads_the_ssh_config_for_sftp(tmp_path: Path) -> None:
    c = {
        "repository": "sftp:backup@b.example.org:/srv/sams",
        "env_file": str(tmp_path / "env"),
        "password_file": str(tmp_path / "password"),
        "cache_dir": str(tmp_path),
        "ssh_config": "/etc/sams/backup/ssh_config",
    }
    assert tool.Restic(c).base[-2:] == ["-o", "sftp.args=-F /etc/sams/backup/ssh_config"]
    assert "-o" not in tool.Restic({**c, "ssh_config": None}).base


@pytest.mark.parametrize(
    ("stderr", "says"),
    [
        ("Host key verification failed.\n", "did not show the pinned host key (sams:backup.sftpHostKey)"),
        ("backup@b.example.org: Permission denied (publickey).\n", "add the stack output backup.sshPublicKey"),
        ("ssh: connect to host b.example.org port 22: No route to host\n", "cannot log in to the SFTP server"),
    ],
)
def test_ssh_refusals_say_what_to_do(tmp_path: Path, stderr: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The login check runs ssh as restic will (SAMS's ssh_config, the URL's login, host and port) and
    turns its refusal into what to do; an ssh that prints what OpenSSH prints stands in for the server."""
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\nprintf '%s' '{stderr}' >&2\nexit 255\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    url = "sftp://backup@b.example.org:2222//srv/sams"
    c = {"repository": url, "env_file": str(tmp_path / "e"), "password_file": "p", "cache_dir": str(tmp_path),
         "ssh_config": "/etc/sams/backup/ssh_config"}  # fmt: skip
    with pytest.raises(tool.Failure) as caught:
        tool.Restic(c).ssh_login()
    assert says in str(caught.value) and url in str(caught.value), caught.value
    assert (tmp_path / "argv").read_text().split() == [
        "-F", "/etc/sams/backup/ssh_config", "-p", "2222", "backup@b.example.org", "-s", "sftp"
    ]  # fmt: skip


def test_the_run_records_what_its_programs_cost() -> None:
    """The status record's CPU and peak memory are the kernel's figures for the run's children:
    after a child that touched 64 MiB the peak says at least that."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096])"], check=True)
    usage = tool.children_usage()
    assert usage["peak_rss_mib"] >= 64, usage
    assert usage["cpu_s"] >= 0


def test_a_host_restore_stops_radicale_with_the_mail_daemons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """restore-host stops every running daemon that writes into a snapshot path (Radicale: its
    collections), restores the paths, then starts them again; one not running stays stopped."""
    calls: list[tuple[str, ...]] = []
    running = {"postfix.service", "dovecot.service", "radicale.service"}

    def systemctl(*args: str, check: bool = True) -> Any:
        calls.append(args)
        code = 0 if args[0] != "is-active" or args[-1] in running else 3
        return type("Done", (), {"returncode": code, "stdout": "", "stderr": ""})()

    class Restic:
        repository = "rest:https://backup.example.org/"

        def __init__(self, cfg: dict[str, Any]) -> None:
            pass

        def snapshots(self, *tags: str) -> list[dict[str, Any]]:
            return [{"id": tags[0], "short_id": tags[0][:4], "time": "2026-12-07T10:00:00Z"}]

    monkeypatch.setattr(tool, "systemctl", systemctl)
    monkeypatch.setattr(tool, "Restic", Restic)
    monkeypatch.setattr(tool, "partner", lambda snap, others, what: others[0])
    monkeypatch.setattr(tool, "pick", lambda snaps, wanted, what, repo: snaps[0])
    monkeypatch.setattr(tool, "restore_in_place", lambda restic, snap, path, when: calls.append(("restore", str(path))))
    monkeypatch.setattr(tool, "restore_postgres", lambda *a, **k: {"restored": True})
    monkeypatch.setattr(tool, "unit_exists", lambda unit: True)
    paths = [str(tmp_path / "vmail"), str(tmp_path / "collections")]
    cfg = {
        "restored_marker": str(tmp_path / "restored"),
        "paths": paths,
        "mail_units": ["postfix.service", "dovecot.service"],
        "data_units": ["radicale.service", "php8.4-fpm.service"],
        "postgres": {"unit": "sams-postgres.service"},
    }
    assert tool.restore_host(cfg, None, False)["restored"] is True
    assert [c[1] for c in calls if c[0] == "restore"] == paths
    stops = [c[1] for c in calls if c[0] == "stop"]
    starts = [c[1] for c in calls if c[0] == "start"]
    assert stops == starts == ["postfix.service", "dovecot.service", "radicale.service"]
    # Every stop before the first restored path, every start after the last.
    assert calls.index(("stop", "radicale.service")) < calls.index(("restore", paths[0]))
    assert calls.index(("restore", paths[-1])) < calls.index(("start", "postfix.service"))
