"""Both writers of the users table flush Dovecot's auth cache and fail when the flush does.

Dovecot 2.4.1's `doveadm auth cache flush` exits 0 even when it cannot reach the auth process: it
prints an "Error:" line and "0 cache entries flushed" (seen in the lab with the auth-master socket
moved away; lab/tests/test_users_lab.py repeats that against the real doveadm). These fakes print
exactly that, so the postgres step's shell and sams-users are held to the same verdict.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from components.database.schema import FLUSH_DOVECOT_AUTH_CACHE
from components.users.steps import TOOL_SOURCE
from tests.scripts import load_script

UNREACHABLE = (
    'echo "Error: auth-master: auth cache flush: connect(/run/dovecot/auth-master) failed: '
    'No such file or directory" >&2; echo "0 cache entries flushed"'
)
CASES = {
    "flushed": ('echo "4 cache entries flushed"', True),
    "auth process unreachable, exit 0": (UNREACHABLE, False),
    "non-zero exit": ('echo "Fatal: no such command" >&2; exit 64', False),
}


def fake_bin(tmp_path: Path, doveadm: str, dovecot_active: bool = True) -> str:
    """A PATH whose systemctl and doveadm are scripts; the rest of the system's tools after them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("systemctl", f"exit {0 if dovecot_active else 3}"), ("doveadm", doveadm)):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


def sams_users() -> ModuleType:
    return load_script("sams_users", TOOL_SOURCE)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_postgres_step_fails_when_the_flush_does(tmp_path: Path, case: str) -> None:
    doveadm, ok = CASES[case]
    result = subprocess.run(
        ["sh", "-eu", "-c", FLUSH_DOVECOT_AUTH_CACHE],  # as sams-apply runs a step's script
        env={"PATH": fake_bin(tmp_path, doveadm)},
        capture_output=True,
        text=True,
        check=False,
    )
    if ok:
        assert result.returncode == 0 and result.stderr == "", result.stderr
    else:
        assert result.returncode == 1, result
        assert "doveadm auth cache flush failed" in result.stderr and "run pulumi up again" in result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_sams_users_reports_what_the_flush_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    doveadm, ok = CASES[case]
    monkeypatch.setenv("PATH", fake_bin(tmp_path, doveadm))
    flushed, error = sams_users().flush_auth_cache()
    assert flushed is ok
    assert (error == "") is ok, error
    if not ok:
        assert error.startswith("the database is updated, but `doveadm auth cache flush` failed"), error


def test_nothing_to_flush_where_dovecot_is_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first apply of the postgres step comes before Dovecot is installed."""
    path = fake_bin(tmp_path, 'echo "must not run" >&2; exit 1', dovecot_active=False)
    result = subprocess.run(
        ["sh", "-eu", "-c", FLUSH_DOVECOT_AUTH_CACHE], env={"PATH": path}, capture_output=True, check=False
    )
    assert result.returncode == 0 and result.stderr == b""
    monkeypatch.setenv("PATH", path)
    assert sams_users().flush_auth_cache() == (False, "")
