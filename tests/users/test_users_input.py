"""Bad mail-list input stops the program with the file and line, before anything reaches Vault;
the provider's preview half (check/diff) never talks to Vault at all."""

from __future__ import annotations

from pathlib import Path

import hvac
import pytest

import mockrun
from components.users.provider import MailboxSecretsProvider, plan
from settings import SettingsError
from tests.users.conftest import Bao

BAD_LISTS = {
    "duplicate user": (
        "domains:\n  - name: sams.test\n    users:\n      - alice\n      - alice\n",
        ":5: domains[0].users[1].name = 'alice': user alice@sams.test declared twice",
    ),
    "invalid local part": (
        "domains:\n  - name: sams.test\n    users: [alice, 'Bob Smith']\n",
        ":3: domains[0].users[1].name = 'Bob Smith': not a valid local part",
    ),
    "user in an undeclared domain": (
        "domains:\n  - name: sams.test\n    users:\n      - alice\n      - carol@nowhere.test\n",
        ":5: domains[0].users[1] = 'carol@nowhere.test': user is in domain 'nowhere.test'",
    ),
    "yaml syntax error": (
        "domains:\n  - name: sams.test\n    users: [alice\n",
        ":4: <yaml> = <missing>: YAML syntax error",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LISTS))
def test_bad_list_names_file_and_line_and_writes_nothing(tmp_path: Path, bao: Bao, case: str) -> None:
    text, expected = BAD_LISTS[case]
    path = tmp_path / "mail_list.yml"
    path.write_text(text)
    with pytest.raises(SettingsError) as exc:
        mockrun.run(
            "lab",
            overrides={"sams:mailList": str(path), "sams:vault": {"address": bao.address, "prefix": f"bad/{case[:3]}"}},
            secret_config={"sams:vaultToken": bao.token},
            dynamic=True,
        )
    assert f"{path}{expected}" in str(exc.value)
    client = hvac.Client(url=bao.address, token=bao.token)
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v2.list_secrets(path="bad", mount_point="secret")


def test_diff_and_check_never_reach_vault() -> None:
    """Nothing listens on port 9: any Vault call would raise. These are the preview's only calls."""
    provider = MailboxSecretsProvider()
    olds = {"mailboxes": {"a.test": ["x", "y"]}, "hashes": {"x@a.test": "h", "y@a.test": "h"}, "vault": {}}
    news = {"mailboxes": {"a.test": ["x", "z"]}, "vault": {"address": "http://127.0.0.1:9"}, "token": "t"}
    assert provider.check(olds, news).failures == []
    diff = provider.diff("id", olds, news)
    assert diff.changes and diff.replaces == []
    assert plan(olds, news) == (["z@a.test"], ["y@a.test"])
    # A scheme change alone re-hashes nobody: it applies to the next new or rotated password.
    rescheme = {**olds, "scheme": "ARGON2ID"}
    assert not provider.diff("id", {**olds, "scheme": "SHA512-CRYPT"}, rescheme).changes
    bad = provider.check(olds, {**news, "scheme": "MD5-CRYPT"}).failures
    assert [(f.property, f.reason) for f in bad] == [
        ("scheme", "must be one of SHA512-CRYPT, ARGON2ID, not 'MD5-CRYPT'")
    ]
    same = {**olds, "token": "t"}
    assert not provider.diff("id", olds, same).changes
    provider.delete("id", olds)  # leaves secrets alone: no Vault call either


def test_provider_without_vault_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match=r"sams:vault\.address"):
        MailboxSecretsProvider().create({"mailboxes": {"a.test": ["x"]}, "vault": {}})


def test_the_shipped_policy_is_enough_and_no_more(bao: Bao) -> None:
    """policy/vault/sams.hcl on a real server: every operation the program does, nothing outside."""
    from components.users.vault import Store, VaultTarget, onboard

    root = hvac.Client(url=bao.address, token=bao.token)
    root.sys.create_or_update_policy("sams", (mockrun.PROJECT_DIR / "policy/vault/sams.hcl").read_text())
    token = root.auth.token.create(policies=["sams"], no_default_policy=True, ttl="10m")["auth"]["client_token"]
    root.secrets.kv.v2.create_or_update_secret(path="other/thing", secret={"x": "y"}, mount_point="secret")
    store = Store(VaultTarget(bao.address, token, "secret", "mail/users"))
    first = onboard(store, "policy@check.test", "SHA512-CRYPT")
    assert first.startswith("{SHA512-CRYPT}$6$")
    assert onboard(store, "policy@check.test", "SHA512-CRYPT") != first  # read back, same password, new salt
    before = store.read("policy@check.test")
    store.write("policy@check.test", "rotated-password")
    assert store.read("policy@check.test") == "rotated-password" != before
    assert "policy@check.test" in store.addresses()
    store.delete("policy@check.test")
    assert "policy@check.test" not in store.addresses()
    limited = hvac.Client(url=bao.address, token=token)
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.secrets.kv.v2.read_secret_version(
            path="other/thing", mount_point="secret", raise_on_deleted_version=True
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.secrets.kv.v2.delete_latest_version_of_secret(path="mail/users/check.test/x", mount_point="secret")
