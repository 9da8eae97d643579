"""The users component as the program registers it (mocks only, no servers)."""

from __future__ import annotations

import mockrun
from components.users.steps import users_step
from tests.conftest import run_variant


def test_one_dynamic_resource_for_the_whole_list_and_secrets_stay_secret() -> None:
    run = run_variant("lab")
    (res,) = run.of_type(mockrun.DYNAMIC)
    assert res.name == "users-secrets"
    assert res.inputs["mailboxes"] == {"sams.test": ["alice", "bob", "tiny"], "other.test": ["carol"]}
    assert res.is_secret("__provider")
    (cmd,) = [c for c in run.of_type("command:remote:Command") if c.name == "users-users-apply"]
    assert cmd.is_secret("stdin") and cmd.inputs["logging"] == "none"
    # After the mail services (Dovecot must exist) and after the secrets are written.
    assert res.urn in cmd.dependencies


def test_vault_token_is_a_secret_input(tmp_path) -> None:
    run = mockrun.run("lab", secret_config={**mockrun.TEST_SECRETS, "sams:vaultToken": "s.token"})
    (res,) = run.of_type(mockrun.DYNAMIC)
    assert res.inputs["token"] == "s.token" and res.is_secret("token")
    assert "s.token" not in str([r.inputs for r in run.resources if r is not res])


def test_users_step_installs_the_tool_and_a_daily_purge_with_the_retention() -> None:
    from settings import load

    settings = load("lab", {**mockrun.stack_config("lab"), "sams:users": '{"archiveDays": 7}'}, mockrun.PROJECT_DIR)
    spec = users_step(settings)
    files = {f.path: f for f in spec.files}
    assert files["/usr/local/lib/sams/sams-users"].mode == "0755"
    assert "--archive-days 7" in files["/etc/systemd/system/sams-archive-purge.service"].content
    assert "OnCalendar=daily" in files["/etc/systemd/system/sams-archive-purge.timer"].content
    assert "enable --now sams-archive-purge.timer" in spec.script
    assert not spec.late_values  # hashes arrive on the command's stdin, never in a staged file
