"""A replaced host is configured again: every remote step's triggers carry the host's identity
(Host.instance_id through Tunnel.host_id), beside its content hash.

Without it, `pulumi up --replace` of the host, or a lost instance re-created after `pulumi refresh`,
changed no step's inputs, so no step re-ran and the new machine was never set up."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import mockrun

REMOTE = ("command:remote:Command", "command:remote:CopyToRemote")
INSTANCES = {"prod": "vultr:index/instance:Instance::host-instance", "dev": "oci:Core/instance:Instance::host-instance"}
PROGRAM = '''\
"""A program of its own: a RemoteStep and the users component over one Tunnel, as __main__.py builds them."""
import pulumi

from components.host.ready import READY
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from components.users import Users, UsersArgs
from mockrun import PROJECT_DIR
from settings import from_pulumi

settings = from_pulumi(PROJECT_DIR)
tunnel = Tunnel(
    host=str(settings.config.wireguard.address),
    user=settings.config.admin_user,
    host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNaHCqgTULz6b1Mhe9TXqvzhs786QCSrdUbHxF/NadX",
    host_id=pulumi.Config("test").get("hostId"),
)
ready = RemoteStep("host-ready", RemoteStepArgs(READY, tunnel))
Users("users", UsersArgs(settings, tunnel, after=(ready,)))
'''


def triggers(run: mockrun.Run) -> dict[str, list[Any]]:
    found = {r.name: r.inputs["triggers"] for r in run.resources if r.type in REMOTE}
    assert len(found) >= 4
    return found


def run_program(tmp_path: Path, host_id: str | None) -> mockrun.Run:
    (tmp_path / "__main__.py").write_text(PROGRAM)
    config = mockrun.stack_config("lab")
    if host_id is not None:
        config["test:hostId"] = host_id
    return mockrun.run("lab", project_dir=tmp_path, config=config)


def test_steps_and_the_users_step_carry_the_tunnels_host_id(tmp_path: Path) -> None:
    old, new, unset = (triggers(run_program(tmp_path, h)) for h in ("i-old", "i-new", None))
    assert set(old) == set(new) == set(unset) >= {"host-ready-copy", "host-ready-apply", "users-users-copy"}
    for name in old:
        assert old[name][0] == new[name][0] == unset[name][0]  # the content hash: the same step
        assert "i-old" in old[name] and "i-new" in new[name], name
        assert old[name] != new[name], f"{name} would not re-run on a new host"
        assert unset[name] == [t for t in old[name] if t != "i-old"]  # no host id: the triggers as before


# --- the whole program (needs `host_id=host.instance_id` in __main__.py's Tunnel) ------------


@pytest.mark.parametrize("stack", sorted(INSTANCES))
def test_a_new_instance_re_runs_every_step(stack: str) -> None:
    """Two runs whose only difference is the instance's id (a replaced or re-created machine)."""
    before = mockrun.KeyStore()
    first = mockrun.run(stack, secret_config=mockrun.TEST_SECRETS, store=before)
    after = mockrun.KeyStore()
    after.values = copy.deepcopy(before.values)
    after.values[INSTANCES[stack]] = {"id": "the-replacement-instance"}
    second = mockrun.run(stack, secret_config=mockrun.TEST_SECRETS, store=after)
    old, new = triggers(first), triggers(second)
    assert set(old) == set(new)
    instance_id = before.values[INSTANCES[stack]]["id"]
    for name in old:
        assert old[name][0] == new[name][0], name  # same content
        assert instance_id in old[name] and "the-replacement-instance" in new[name], name
        assert old[name] != new[name], f"{name} would not re-run on a new host"


def test_an_existing_host_is_known_by_its_address(runner: Any) -> None:
    for name, trig in triggers(runner("lab")).items():
        assert "existing:198.18.0.10" in trig, name  # Pulumi.lab.yaml's sams:existing.ipv4
