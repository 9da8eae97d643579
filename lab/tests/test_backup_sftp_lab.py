"""Backups to an SFTP server, proven on the lab host against a real sshd in the lab's internet
(lab/sftpserver.py): the host logs in with the key the program made for it and accepts the server
only by its pinned host key.

  * a nightly run writes a repository on the server, and a folder comes back from it;
  * a server showing another host key gets nothing, and the run says the pin did not match;
  * a server that does not know the host's key refuses it, and the run says what to add where;
  * an SFTP server that is down fails the run at once, naming the repository;
  * back on the stack's own repository, the key and the pins leave the host.

Each test leaves the host on the stack's own settings (the rest-server of lab/backupserver.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from components.backup.plan import KNOWN_HOSTS_FILE, SSH_CONFIG_FILE, SSH_KEY_FILE
from lab import program, sftpserver
from lab.dns import SENDER_DOMAIN
from lab.hostcmd import sh
from lab.netclient import message
from lab.session import Lab, up_with
from lab.tests.test_backup_lab import backup_config, deliver_many, expunge, mailbox_state, run_unit, tool
from lab.world import World, world

pytestmark = pytest.mark.lab

USER = "alice@sams.test"


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("backup-sftp")) as w:
        yield w


def up_sftp(lab: Lab, host_key: str, path: str = "sams", **extra: Any) -> str:
    """`pulumi up` with the SFTP repository; the host's public key (the stack output backup.sshPublicKey)."""
    backup = backup_config(lab, repository=sftpserver.repository(path))
    backup.pop("serverCa", None)  # an HTTPS CA means nothing to SSH
    overrides = {"sams:backup": {**backup, "sftpHostKey": host_key, **extra}}
    run = program.lab_run(lab.paths, program.lab_keys(lab.paths), overrides)
    program.apply(run, lab.paths, shell=lab.shell, images=lab.images)
    public = run.outputs["backup"]["sshPublicKey"]
    assert isinstance(public, str) and public.startswith("ssh-ed25519 "), public
    return public


def unit_fails_within(lab: Lab, seconds: float) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    ok, record = run_unit(lab)
    took = time.monotonic() - started
    assert not ok and record["result"] == "failed", record
    assert took < seconds, (took, record)
    return took, record


@pytest.fixture
def host_key(lab: Lab) -> Iterator[str]:
    """The lab SFTP server's own host key (the pin); afterwards the server stops and the stack's
    own repository is back."""
    try:
        yield sftpserver.host_key(lab.paths)
    finally:
        sftpserver.stop(lab.paths)
        up_with(lab, {})
        # Back on the rest-server: the SFTP key and pins are gone from the host.
        left = sh(lab, f"ls {SSH_KEY_FILE} {KNOWN_HOSTS_FILE} {SSH_CONFIG_FILE} 2>/dev/null || true").strip()
        assert left == "", left
        assert json.loads(sh(lab, "cat /etc/sams/backup/config.json"))["ssh_config"] is None


def test_a_nightly_run_to_sftp_and_a_folder_back_from_it(mail: World, host_key: str) -> None:
    lab = mail.lab
    public = up_sftp(lab, host_key)
    running = sftpserver.start(lab.paths, lab.spec.inet_ipv4, [public])
    assert sh(lab, f"stat -c '%a %U' {SSH_KEY_FILE}").strip() == "600 root"
    pins = sh(lab, f"cat {KNOWN_HOSTS_FILE}").splitlines()
    assert pins == [f"[{sftpserver.NAME}]:{sftpserver.PORT} {' '.join(host_key.split()[:2])}"]
    marker = f"sftp-{uuid.uuid4().hex[:10]}"
    batch = [(USER, [message(f"x@{SENDER_DOMAIN}", USER, f"{marker} {i}") for i in range(12)])]
    assert mail.inet(deliver_many, mail.host, batch) == 12
    assert len(mail.read(USER, marker, want=12)) == 12

    ok, record = run_unit(lab)
    assert ok and record["result"] == "ok", record
    assert record["repository"] == running.repository(), record  # the login name stays, no secret in it
    assert record["check"]["result"] == "ok", record
    assert record["peak_rss_mib"] > 10 and record["cpu_s"] > 0, record  # restic's own cost, recorded
    # The repository is on the server's disk, encrypted: restic's layout, and no message text in it.
    repo = running.data / "sams"
    assert {"config", "data", "index", "keys", "snapshots"} <= {p.name for p in repo.iterdir()}
    packs = [p for p in (repo / "data").rglob("*") if p.is_file()]
    assert packs and not any(marker.encode() in p.read_bytes() for p in packs)
    # The server let the host in by its key.
    assert "Accepted publickey for root" in (running.directory / "sshd.log").read_text()

    alice = mail.login(USER)
    before = mail.inet(mailbox_state, mail.host, mail.cafile, [alice])[USER]["INBOX"]
    mail.inet(expunge, mail.host, mail.cafile, alice, "INBOX", "1:4")
    out = json.loads(tool(lab, f"restore-mailbox {USER} --folder INBOX"))
    assert out["restored"] == 4, out
    after = mail.inet(mailbox_state, mail.host, mail.cafile, [alice])[USER]["INBOX"]
    assert after.keys() == before.keys()


def test_a_server_with_another_host_key_gets_nothing(mail: World, host_key: str) -> None:
    """Someone else answering on the name (or the server rebuilt without its key): no snapshot is
    sent, no key is learned, and the run names the pin."""
    lab = mail.lab
    public = up_sftp(lab, host_key, path="impostor")
    other = sftpserver.start(lab.paths, lab.spec.inet_ipv4, [public], key_name="other_ed25519")
    assert other.host_key != host_key
    _, record = unit_fails_within(lab, 120)
    assert "did not show the pinned host key (sams:backup.sftpHostKey)" in record["message"], record
    assert other.repository("impostor") in record["message"], record
    assert not (other.data / "impostor").exists()
    assert sh(lab, f"cat {KNOWN_HOSTS_FILE}").count("\n") == 1  # nothing learned


def test_a_server_that_does_not_know_the_hosts_key_says_what_to_add(mail: World, host_key: str) -> None:
    lab = mail.lab
    up_sftp(lab, host_key, path="unknown")
    sftpserver.start(lab.paths, lab.spec.inet_ipv4, [])
    _, record = unit_fails_within(lab, 120)
    assert "refused the host's key: add the stack output backup.sshPublicKey" in record["message"], record


def test_an_sftp_server_that_is_down_fails_the_run_naming_it(mail: World, host_key: str) -> None:
    lab = mail.lab
    up_sftp(lab, host_key)
    sftpserver.stop(lab.paths)
    _, record = unit_fails_within(lab, 90)
    assert f"cannot reach the repository {sftpserver.repository()}" in record["message"], record
    assert f"{sftpserver.NAME}:{sftpserver.PORT}" in record["message"], record
