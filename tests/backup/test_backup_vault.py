"""The repository password in Vault (components/backup/vault.py), against a real OpenBao dev server:
written once, never over a password this stack did not write, new versions for deliberate changes,
left alone by delete, nothing written by a preview, and the shipped policy enough for all of it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest

import mockrun
from components.backup.vault import PREFIX, BackupKeyProvider, key_path
from tests.users.conftest import Bao

REPOSITORY = "rest:https://backup.example.org:8000/sams/"
PROGRAM = '''\
"""A program of its own: one parent and store_backup_key, as components/backup/__init__.py calls it."""
import pulumi

from components.backup.vault import store_backup_key
from mockrun import PROJECT_DIR
from settings import from_pulumi

settings = from_pulumi(PROJECT_DIR)
parent = pulumi.ComponentResource("sams:backup:Backup", "backup")
test = pulumi.Config("test")
password = pulumi.Output.secret(test.require("password"))
key = store_backup_key("backup", settings, password, pulumi.Output.from_input(test.require("repo")), parent)
pulumi.export("stored", key is not None)
'''


@pytest.fixture
def kv(bao: Bao) -> Any:
    return hvac.Client(url=bao.address, token=bao.token).secrets.kv.v2


@pytest.fixture
def host() -> Iterator[str]:
    """A hostname of its own per test (in the lab's domain): each test starts with no secret at its path."""
    yield f"mail-{uuid.uuid4().hex[:8]}.sams.test"


def props(bao: Bao, hostname: str, password: str, repository: str = REPOSITORY, token: str | None = None) -> dict:
    return {
        "password": password,
        "repository": repository,
        "hostname": hostname,
        "vault": {"address": bao.address, "mount": "secret"},
        "token": token or bao.token,
    }


def outs(result: Any) -> dict[str, Any]:
    assert result.outs is not None
    return dict(result.outs)


def stored(kv: Any, hostname: str, version: int | None = None) -> tuple[dict[str, Any], int]:
    found = kv.read_secret_version(
        path=key_path(hostname), mount_point="secret", version=version, raise_on_deleted_version=True
    )
    return found["data"]["data"], found["data"]["metadata"]["version"]


def test_written_once_then_only_on_a_change(bao: Bao, kv: Any, host: str) -> None:
    provider = BackupKeyProvider()
    first = provider.create(props(bao, host, "pw-one"))
    assert outs(first)["path"] == f"{PREFIX}/{host}" and outs(first)["version"] == 1
    assert stored(kv, host) == ({"password": "pw-one", "repository": REPOSITORY}, 1)
    # A create over the same secret (state lost, same password configured): nothing new is written.
    assert outs(provider.create(props(bao, host, "pw-one")))["version"] == 1
    # The repository moved: a new version, same password.
    moved = provider.update("id", outs(first), props(bao, host, "pw-one", "s3:https://s3.example.org/sams"))
    assert outs(moved)["version"] == 2
    assert stored(kv, host)[0] == {"password": "pw-one", "repository": "s3:https://s3.example.org/sams"}
    # sams:backupPassword changed in this stack: a new version; KV v2 keeps the old password.
    rotated = provider.update("id", outs(moved), props(bao, host, "pw-two", "s3:https://s3.example.org/sams"))
    assert outs(rotated)["version"] == 3 and stored(kv, host)[0]["password"] == "pw-two"
    assert stored(kv, host, version=2)[0]["password"] == "pw-one"
    provider.delete("id", outs(rotated))  # the key outlives the resource
    assert stored(kv, host)[1] == 3


def test_a_password_this_stack_did_not_write_is_never_replaced(bao: Bao, kv: Any, host: str) -> None:
    """A stack re-created from nothing generates a new password: the old snapshots need the stored one."""
    provider = BackupKeyProvider()
    provider.create(props(bao, host, "the-old-key"))
    with pytest.raises(RuntimeError) as exc:
        provider.create(props(bao, host, "a-new-random-key"))
    message = str(exc.value)
    assert f"secret/sams/backup/{host} (version 1)" in message
    read_it = f"vault kv get -field=password -mount=secret {PREFIX}/{host}"
    assert f'pulumi config set --secret sams:backupPassword "$({read_it})"' in message
    assert stored(kv, host) == ({"password": "the-old-key", "repository": REPOSITORY}, 1)
    # Nor on update when someone else changed the secret since this stack wrote it.
    ours = outs(provider.create(props(bao, host, "the-old-key")))
    kv.create_or_update_secret(path=key_path(host), secret={"password": "set-by-hand"}, mount_point="secret")
    with pytest.raises(RuntimeError, match="one this stack did not write"):
        provider.update("id", ours, props(bao, host, "a-new-random-key"))
    assert stored(kv, host)[0] == {"password": "set-by-hand"}


def test_a_deleted_latest_version_is_not_written_over(bao: Bao, kv: Any, host: str) -> None:
    """`vault kv delete` keeps the version (undelete brings it back): a write must not bury it."""
    BackupKeyProvider().create(props(bao, host, "the-old-key"))
    kv.delete_latest_version_of_secret(path=key_path(host), mount_point="secret")
    with pytest.raises(RuntimeError, match="its latest version was deleted"):
        BackupKeyProvider().create(props(bao, host, "a-new-random-key"))
    kv.undelete_secret_versions(path=key_path(host), versions=[1], mount_point="secret")
    assert stored(kv, host) == ({"password": "the-old-key", "repository": REPOSITORY}, 1)


def test_check_and_diff_never_reach_vault() -> None:
    """Nothing listens on port 9: a Vault call would raise. These are a preview's only calls."""
    provider = BackupKeyProvider()
    olds = {"password": "p", "repository": REPOSITORY, "hostname": "h", "vault": {"address": "http://127.0.0.1:9"}}
    assert provider.check({}, olds).failures == []
    assert [f.property for f in provider.check({}, {**olds, "password": ""}).failures] == ["password"]
    assert not provider.diff("id", olds, {**olds, "token": "another"}).changes
    changed = provider.diff("id", olds, {**olds, "password": "q"})
    assert changed.changes and changed.replaces == []


def test_the_shipped_policy_is_enough_and_no_more(bao: Bao, kv: Any, host: str) -> None:
    root = hvac.Client(url=bao.address, token=bao.token)
    root.sys.create_or_update_policy("sams", (mockrun.PROJECT_DIR / "policy/vault/sams.hcl").read_text())
    token = root.auth.token.create(policies=["sams"], no_default_policy=True, ttl="10m")["auth"]["client_token"]
    provider = BackupKeyProvider()
    first = provider.create(props(bao, host, "pw", token=token))
    provider.update("id", outs(first), props(bao, host, "pw2", token=token))
    assert stored(kv, host)[0]["password"] == "pw2"
    limited = hvac.Client(url=bao.address, token=token).secrets.kv.v2
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.delete_metadata_and_all_versions(path=key_path(host), mount_point="secret")
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.list_secrets(path=PREFIX, mount_point="secret")


# --- as a program registers it (mocks, dynamic providers run for real) -----------------------


@pytest.fixture
def program(tmp_path: Path) -> Path:
    (tmp_path / "__main__.py").write_text(PROGRAM)
    return tmp_path


def run_program(
    program: Path, bao: Bao | None, host: str, password: str, store: mockrun.KeyStore, **kw: Any
) -> mockrun.Run:
    config = {**mockrun.stack_config("lab"), "sams:hostname": host, "test:password": password, "test:repo": REPOSITORY}
    secret = {}
    if bao is not None:
        config["sams:vault"] = json.dumps({"address": bao.address})
        secret["sams:vaultToken"] = bao.token
    return mockrun.run("lab", project_dir=program, config=config, secret_config=secret, dynamic=True, store=store, **kw)


def test_store_backup_key_writes_on_up_only(program: Path, bao: Bao, kv: Any, host: str) -> None:
    store = mockrun.KeyStore()
    preview = run_program(program, bao, host, "first-password", store, preview=True)
    with pytest.raises(hvac.exceptions.InvalidPath):  # a preview writes nothing
        stored(kv, host)
    (res,) = preview.of_type(mockrun.DYNAMIC)
    assert res.name == "backup-key-in-vault" and res.inputs["hostname"] == host
    assert res.is_secret("password") and res.is_secret("token")
    assert res.inputs["repository"] == REPOSITORY and res.inputs["vault"]["mount"] == "secret"
    (parent,) = preview.of_type("sams:backup:Backup")
    assert res.parent == parent.urn

    run_program(program, bao, host, "first-password", store)
    assert stored(kv, host) == ({"password": "first-password", "repository": REPOSITORY}, 1)
    run_program(program, bao, host, "first-password", store)  # unchanged: no new version
    assert stored(kv, host)[1] == 1
    run_program(program, bao, host, "second-password", store)  # this stack's own password changed
    assert stored(kv, host) == ({"password": "second-password", "repository": REPOSITORY}, 2)


def test_without_vault_it_warns_and_registers_nothing(program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pulumi

    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: warned.append(msg))
    run = run_program(program, None, "mail.sams.test", "pw", mockrun.KeyStore())
    assert run.outputs["stored"] is False and not run.of_type(mockrun.DYNAMIC)
    assert [w for w in warned if w.startswith("backup: no Vault")] == [
        "backup: no Vault to keep the repository password in (it is only in the stack's state): set "
        "sams:vault.address and the secret sams:vaultToken (or VAULT_ADDR / VAULT_TOKEN), see docs/vault_setup_guide.md"
    ]


# --- the real program (needs the call in components/backup/__init__.py) ---------------------


def test_the_program_keeps_the_backup_password_in_vault(bao: Bao, kv: Any, host: str) -> None:
    run = mockrun.run(
        "lab",
        overrides={
            "sams:hostname": host,
            "sams:backup": {"enabled": True, "repository": REPOSITORY},
            "sams:vault": {"address": bao.address},
        },
        secret_config={**mockrun.TEST_SECRETS, "sams:vaultToken": bao.token},
        dynamic=True,
    )
    (res,) = [r for r in run.of_type(mockrun.DYNAMIC) if r.name == "backup-key-in-vault"]
    (backup,) = run.of_type("sams:backup:Backup")
    assert res.parent == backup.urn
    (password,) = [r for r in run.of_type("random:index/randomPassword:RandomPassword") if r.name == "backup-password"]
    assert stored(kv, host)[0] == {"password": password.outputs["result"], "repository": REPOSITORY}
