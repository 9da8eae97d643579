"""The postgres step (pure): Docker settings, the container's unit, and the schema it migrates."""

from __future__ import annotations

import json

from components.database.roles import SUPERUSER
from components.database.schema import SQL_DIR, apply_script, password_late_name, schema_files
from components.remote.steps import File, Service, StepSpec, late
from components.render import render
from settings import Settings

CONTAINER = "sams-postgres"
DATA_DIR = "/opt/postgres/data"
WAL_ARCHIVE = "/opt/postgres/wal_archive"
ENV_FILE = "/etc/sams/postgres/env"
UNIT = "sams-postgres.service"
# uid 70 is postgres in postgres:17-alpine and in the lab's sams/postgres:17-trixie image alike.
PG_UID = 70

# Only host networking is used, so Docker needs no bridge, NAT or iptables rules of its own:
# the host's nftables policy stays the only firewall.
DOCKER_DAEMON = {
    "bridge": "none",
    "iptables": False,
    "ip6tables": False,
    "ip-forward": False,
    "log-driver": "journald",
}


def listen_addresses(settings: Settings) -> tuple[str, str]:
    return ("127.0.0.1", str(settings.config.wireguard.address))


def archive_command(directory: str) -> str:
    """PostgreSQL's archive_command (run by /bin/sh in the container, %p and %f its placeholders).

    A segment already in the archive is never overwritten: the command succeeds if the copy there
    is identical (PostgreSQL may archive a segment again after a crash between the copy and its
    own bookkeeping) and fails if it differs, which stops archiving visibly instead of losing the
    older copy. A new segment is copied under a temporary name, then renamed: a backup job never
    sees a half-written one.
    """
    final, temporary = f"{directory}/%f", f"{directory}/.%f.tmp"
    return f"if test -f {final}; then cmp -s %p {final}; else cp %p {temporary} && mv {temporary} {final}; fi"


def restore_command(directory: str) -> str:
    """PostgreSQL's restore_command: where recovery (sams-backup restore-*) reads archived WAL; unused
    outside recovery."""
    return f"cp {directory}/%f %p"


def postgres_step(settings: Settings) -> StepSpec:
    image = settings.config.database.image
    archive = archive_command(WAL_ARCHIVE)
    unit = render(
        "database",
        "etc/systemd/system/sams-postgres.service.j2",
        major=17,
        container=CONTAINER,
        superuser=SUPERUSER,
        env_file=ENV_FILE,
        data_dir=DATA_DIR,
        wal_archive=WAL_ARCHIVE,
        image=image,
        listen_addresses=",".join(listen_addresses(settings)),
        archive_command=archive,
        restore_command=restore_command(WAL_ARCHIVE),
    )
    psql = f"docker exec -i {CONTAINER} psql"
    script = f"""\
install -d -m 0700 -o {PG_UID} -g {PG_UID} {DATA_DIR} {WAL_ARCHIVE}
# The unit waits on the container with curl (cloud-init installs it; hosts bootstrapped before may lack it).
command -v curl >/dev/null || {{
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl
}}
# Real stacks pull from the registry; the lab loads its locally built image beforehand.
docker image inspect {image} >/dev/null 2>&1 || docker pull {image}
systemctl daemon-reload
systemctl enable {UNIT}
action=start
case "$SAMS_CHANGED" in *{UNIT}*|*{ENV_FILE}*) action=restart ;; esac
# Started means ready: the unit's ExecStartPost waits for pg_isready, so the job returns only then.
systemctl "$action" {UNIT} || {{
    journalctl -u {UNIT} -n 20 --no-pager >&2  # the unit: docker run's and curl's own errors
    journalctl -t {CONTAINER} -n 50 --no-pager >&2  # PostgreSQL's log, through Docker
    exit 1
}}
{apply_script(f"{psql} -U {SUPERUSER}", f"{psql} -U sams_owner -d sams")}"""
    files = (
        File("/etc/docker/daemon.json", json.dumps(DOCKER_DAEMON, indent=2) + "\n"),
        File(ENV_FILE, f"POSTGRES_PASSWORD={late(password_late_name(SUPERUSER))}\n", mode="0600"),
        File(f"/etc/systemd/system/{UNIT}", unit),
        *schema_files(settings.mail),
    )
    late_names = sorted({password_late_name(SUPERUSER), *_late_in(files)})
    return StepSpec(
        name="postgres",
        files=files,
        services=(Service("docker.service", ("/etc/docker/daemon.json",), "restart"),),
        script=script,
        late_values=tuple(late_names),
        description=f"PostgreSQL 17 in Docker, schema in {SQL_DIR}",
    )


def _late_in(files: tuple[File, ...]) -> set[str]:
    import re

    return {m for f in files for m in re.findall(r"@@SAMS_LATE:([A-Za-z0-9_]+)@@", f.content)}
