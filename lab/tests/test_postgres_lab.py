"""PostgreSQL 17 in Docker on the lab host, as components/database promises: host networking,
listening on loopback and the WireGuard address only, data under /opt/postgres/data, and every
finished WAL segment copied to /opt/postgres/wal_archive."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from components.database import schema, steps
from components.remote.steps import stage
from lab import program
from lab.hostcmd import run_step, sh
from lab.session import Lab

pytestmark = pytest.mark.lab

PSQL = f"docker exec -i {steps.CONTAINER} psql -X -At -v ON_ERROR_STOP=1 -U postgres"


def sql(lab: Lab, query: str) -> str:
    return sh(lab, f'{PSQL} -c "{query}"').strip()


def test_the_container_uses_host_networking_and_the_stacks_image(lab: Lab) -> None:
    fmt = "{{.HostConfig.NetworkMode}} {{.Config.Image}} {{.State.Running}}"
    out = sh(lab, f"docker inspect -f '{fmt}' {steps.CONTAINER}").split()
    assert out == ["host", lab.settings.config.database.image, "true"], out
    assert sh(lab, f"cat {steps.DATA_DIR}/PG_VERSION").strip() == "17"
    assert sql(lab, "SHOW data_directory") == "/var/lib/postgresql/data"  # the volume of DATA_DIR


def test_postgres_listens_on_loopback_and_the_tunnel_only(lab: Lab) -> None:
    listeners = sorted(sh(lab, "ss -Htln 'sport = :5432' | awk '{print $4}'").split())
    wg = str(lab.settings.config.wireguard.address)
    assert listeners == sorted(["127.0.0.1:5432", f"{wg}:5432"]), listeners


def switch_and_archive(lab: Lab) -> str:
    """Close the current WAL segment (after a record, so it holds one) and wait until it is in the
    archive; its name."""
    sql(lab, "SELECT pg_logical_emit_message(false, 'sams-lab-test', 'archive me')")  # no schema change
    segment = sql(lab, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    sql(lab, "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while sh(lab, f"test -f {steps.WAL_ARCHIVE}/{segment} && echo yes || true").strip() != "yes":
        assert time.monotonic() < deadline, sql(lab, "SELECT * FROM pg_stat_archiver")
        time.sleep(0.5)
    return segment


def test_a_finished_wal_segment_reaches_the_archive(lab: Lab) -> None:
    """archive_command runs and succeeds: the segment PostgreSQL switches away from appears, whole,
    in the archive, and the archiver reports no new failure."""
    failed_before = int(sql(lab, "SELECT failed_count FROM pg_stat_archiver"))
    segment = switch_and_archive(lab)
    assert int(sh(lab, f"stat -c %s {steps.WAL_ARCHIVE}/{segment}")) == 16 * 2**20
    assert int(sql(lab, "SELECT failed_count FROM pg_stat_archiver")) == failed_before
    assert sql(lab, "SELECT last_archived_wal FROM pg_stat_archiver") >= segment
    # Copied under a temporary name and renamed: nothing half-written is left behind.
    assert sh(lab, f"find {steps.WAL_ARCHIVE} -name '.*'").strip() == ""


def test_systemd_supervises_the_container(lab: Lab) -> None:
    """The unit's main process waits on the container (curl on Docker's socket, not a foreground
    `docker run`); a container that dies is replaced, the unit is running again only once PostgreSQL
    answers, and the very first lookups of Dovecot and Postfix after that succeed (Dovecot's pooled
    connections to the dead server were renewed by the reload in ExecStartPost)."""
    unit = steps.UNIT
    main_pid = sh(lab, f"systemctl show -p MainPID --value {unit}").strip()
    assert sh(lab, f"cat /proc/{main_pid}/comm").strip() == "curl"
    old = sh(lab, f"docker inspect -f '{{{{.Id}}}}' {steps.CONTAINER}").strip()
    sh(lab, f"docker kill {steps.CONTAINER}")
    deadline = time.monotonic() + 60
    while True:
        state = sh(lab, f"systemctl show -p SubState --value {unit}").strip()
        current = sh(lab, f"docker inspect -f '{{{{.Id}}}}' {steps.CONTAINER} 2>/dev/null || true").strip()
        if state == "running" and current not in ("", old):
            break
        assert time.monotonic() < deadline, sh(lab, f"journalctl -u {unit} -n 20 --no-pager")
        time.sleep(0.2)
    assert (
        sh(lab, f"docker exec {steps.CONTAINER} pg_isready -h 127.0.0.1 -U postgres")
        .strip()
        .endswith("accepting connections")
    )
    # One try each, no retry: a failure here is a refused login or a deferred delivery for a user.
    home = sh(lab, "doveadm user -f home alice@sams.test").strip()
    assert home == "/var/mail/vmail/sams.test/alice", home
    maildir = sh(lab, "postmap -q alice@sams.test proxy:pgsql:/etc/postfix/pgsql/virtual_mailbox_maps.cf")
    assert maildir.strip() == "sams.test/alice/", maildir


def test_archive_command_never_overwrites_an_archived_segment(lab: Lab) -> None:
    """The archive_command itself, in the running container: copying a segment that is already
    archived succeeds only when the two are identical; a different file under that name fails."""
    segment = switch_and_archive(lab)
    archived = f"{steps.WAL_ARCHIVE}/{segment}"

    def run(source: str) -> int:
        command = steps.archive_command(steps.WAL_ARCHIVE).replace("%p", source).replace("%f", segment)
        out = lab.shell.run(
            ["sudo", "-n", "docker", "exec", "-u", "postgres", steps.CONTAINER, "sh", "-c", command], check=False
        )
        return out.returncode

    before = sh(lab, f"sha256sum {archived}").split()[0]
    assert run(archived) == 0  # the identical copy: already archived, success
    sh(lab, f"head -c 16 /dev/urandom > {steps.WAL_ARCHIVE}/.different && chown 70:70 {steps.WAL_ARCHIVE}/.different")
    try:
        assert run(f"{steps.WAL_ARCHIVE}/.different") != 0  # same name, other content: refused
    finally:
        sh(lab, f"rm -f {steps.WAL_ARCHIVE}/.different")
    assert sh(lab, f"sha256sum {archived}").split()[0] == before


def test_a_mail_list_change_counts_at_once_though_dovecot_caches_users(lab: Lab, tmp_path: Path) -> None:
    """Dovecot caches what it read from the users table (auth_cache_size); the postgres step flushes
    that cache after applying the mail list, so a new quota (or a removed user) counts at once, not
    after the cache's hour. Checked through Dovecot's own userdb lookup, which the cache answers."""

    def quota() -> str:
        return sh(lab, "doveadm user -f quota_storage_size tiny@sams.test").strip()

    original = next(s for s in program.steps_of(lab.run) if s.name.endswith("-postgres"))
    stdin = original.command.inputs.get("stdin")
    before = quota()
    assert before == "1048576B", before  # tiny@: 1M in stacks/lab/mail_list.yml; now cached
    mail = lab.settings.mail
    bigger = mail.model_copy(
        update={
            "domains": [
                d.model_copy(
                    update={
                        "users": [
                            u.model_copy(update={"quota": 2 * 1024**2}) if u.name == "tiny" else u for u in d.users
                        ]
                    }
                )
                for d in mail.domains
            ]
        }
    )
    spec = steps.postgres_step(dataclasses.replace(lab.settings, mail=bigger))
    try:
        summary = run_step(lab, spec, stage(spec, tmp_path), stdin)
        assert summary["changed"] == [f"{schema.SQL_DIR}/mail_list.sql"], summary
        assert quota() == "2097152B"
    finally:
        original_spec = steps.postgres_step(lab.settings)
        restored = run_step(lab, original_spec, Path(original.copy.inputs["source"]["path"]), stdin)
    assert restored["changed"] == [f"{schema.SQL_DIR}/mail_list.sql"], restored
    assert quota() == before
