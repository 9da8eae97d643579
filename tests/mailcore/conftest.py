"""Fixtures for the mail-core tests: the lab stack's settings, its rendered steps, and a scratch
Debian 13 tree with those steps installed the way sams-apply installs them.

Registers no markers (the `chroot` marker is declared in pyproject.toml).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import mockrun
import settings
from components.database import schema
from components.mail import services
from components.remote.steps import APPLY_SCRIPT, StepSpec
from tests.scripts import load_script

PROJECT = Path(__file__).resolve().parents[2]

# Stand-ins for the late values: alphanumeric like the program's generated passwords, and
# recognisable, so a test can tell where each one landed.
DUMMY_LATE = {
    "db_sams_owner_password": "DummyOwnerPw0000000000000000001",
    "db_postfix_password": "DummyPostfixPw00000000000000002",
    "db_dovecot_password": "DummyDovecotPw00000000000000003",
    "relay_password": "DummyRelayPw0000000000000000004",
    "rspamd_controller_password": "DummyRspamdPw000000000000000005",
    "rspamd_metrics_password": "DummyRspamdReadPw0000000000006",
}

# Every command the step scripts send to systemd is recorded here instead (no systemd in a chroot).
SYSTEMCTL_LOG = "/var/log/sams-systemctl.log"
# Units a test has declared not running: `systemctl is-active` answers "inactive" (3) for these,
# "active" for the rest (no unit runs under systemd in the tree; most tests want the scripts'
# reload paths taken).
SYSTEMCTL_INACTIVE = "/var/lib/sams-tests/inactive-units"
_SYSTEMCTL_STUB = f"""#!/bin/sh
echo "$*" >> {SYSTEMCTL_LOG}
if [ "$1" = is-active ]; then
    for unit; do :; done
    if [ -f {SYSTEMCTL_INACTIVE} ] && grep -qx "$unit" {SYSTEMCTL_INACTIVE}; then
        exit 3
    fi
fi
exit 0
"""


def stub_systemctl(root: Path) -> None:
    """The tree's systemctl logs its calls (SYSTEMCTL_LOG): no systemd runs in a chroot."""
    stub = root / "usr/local/sbin/systemctl"
    stub.write_text(_SYSTEMCTL_STUB)
    stub.chmod(0o755)


def declare_inactive(root: Path, *units: str) -> None:
    """From now on the tree's systemctl says these units are not running."""
    path = root / SYSTEMCTL_INACTIVE.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(f"{u}\n" for u in units)


SAMS_APPLY = load_script("sams_apply", APPLY_SCRIPT)


@pytest.fixture(scope="session")
def lab_settings() -> settings.Settings:
    return settings.load("lab", mockrun.stack_config("lab"), PROJECT)


@pytest.fixture(scope="session")
def steps(lab_settings: settings.Settings) -> tuple[StepSpec, ...]:
    return services.mail_steps(lab_settings)


def _ids(root: Path, db: str) -> dict[str, int]:
    """name -> id from the tree's own /etc/passwd or /etc/group (ids differ from the host's)."""
    out = {}
    for line in (root / "etc" / db).read_text().splitlines():
        fields = line.split(":")
        out[fields[0]] = int(fields[2])
    return out


def install_step(root: Path, spec: StepSpec, late: dict[str, str]) -> list[str]:
    """Install a step's files into *root* as sams-apply would (late tokens replaced, mode and
    owner set) and return the installed paths."""
    users, groups = _ids(root, "passwd"), _ids(root, "group")
    names = list(spec.late_values)
    installed = []
    for f in spec.files:
        text = SAMS_APPLY._render(f.content, late, names)
        target = root / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        os.chown(target, users[f.owner], groups[f.group])
        os.chmod(target, int(f.mode, 8))
        installed.append(f.path)
    return installed


def run_step_script(root: Path, spec: StepSpec, late: dict[str, str], changed: list[str]) -> None:
    """Run the step's script inside *root* with the environment sams-apply gives it."""
    from lab.trixie_chroot import run_in

    if not spec.script:
        return
    (root / "tmp" / f"{spec.name}.sh").write_text(spec.script)
    env = {"SAMS_CHANGED": "\n".join(changed), "SAMS_STEP_DIR": f"/tmp/{spec.name}"}
    env.update({f"SAMS_LATE_{k}": late[k] for k in spec.late_values})
    result = run_in(root, ["/bin/sh", "-eu", f"/tmp/{spec.name}.sh"], env=env)
    assert result.returncode == 0, f"step {spec.name} script failed:\n{result.stdout}\n{result.stderr}"


def make_dkim_keys(root: Path, domains: list[str], selector: str) -> None:
    """What the dkim-keys step puts on the host: one RSA key per domain."""
    from lab.trixie_chroot import run_in

    for domain in domains:
        path = f"{services.DKIM_KEY_DIR}/{domain}/{selector}.private"
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        result = run_in(root, ["openssl", "genrsa", "-out", path, "2048"])
        assert result.returncode == 0, result.stderr
        result = run_in(root, ["sh", "-c", f"chown -R opendkim:opendkim {services.DKIM_KEY_DIR} && chmod 0600 {path}"])
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def mail_root(
    lab_settings: settings.Settings, steps: tuple[StepSpec, ...], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A scratch trixie tree with every mail step installed and its script run, in order."""
    if os.geteuid() != 0:
        pytest.fail("the chroot tests need root (mount, chroot): run them through ./run test")
    if not shutil.which("mmdebstrap") and not _tree_cached():
        pytest.fail("mmdebstrap is not installed and no cached tree exists: run ./run setup")
    from lab.trixie_chroot import mounted, scratch

    with scratch(tmp_path_factory.mktemp("mailcore")) as root, mounted(root):
        stub_systemctl(root)
        declare_inactive(root, "rspamd")  # no Rspamd runs here: its step's reload waits for a running one
        make_dkim_keys(root, [d.name for d in lab_settings.mail.domains], lab_settings.config.dkim.selector)
        for spec in steps:
            changed = install_step(root, spec, DUMMY_LATE)
            run_step_script(root, spec, DUMMY_LATE, changed)
        yield root


def _tree_cached() -> bool:
    from lab.trixie_chroot import tree_path

    return (tree_path() / "usr/sbin/postfix").exists()


@pytest.fixture(scope="session")
def sql_files(lab_settings: settings.Settings) -> dict[str, str]:
    return {Path(f.path).name: f.content for f in schema.schema_files(lab_settings.mail)}
