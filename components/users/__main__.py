"""Password rotation for admins: a new random password in Vault and its hash in the database.

    python -m components.users rotate [--stack lab] (--user alice@example.org ... | --all)

Vault: sams:vault.{address,mount,prefix} from Pulumi.<stack>.yaml, VAULT_ADDR as fallback, and
VAULT_TOKEN from the environment (the stack file's secret cannot be read without the CLI).
Database: over SSH through the tunnel, `sams-users set-hashes` on the host (hashes on stdin);
`--psql CMD` runs the same tool here against a psql command instead (tests, break-glass).

Vault is written first (KV v2 keeps the old version); if the database update fails, every
password is put back in Vault, so Vault and the database never disagree afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from components.users.hashing import hash_password
from components.users.steps import TOOL, TOOL_SOURCE
from components.users.vault import Store, VaultTarget, generate_password, parallel, resolve_address

PROJECT = Path(__file__).resolve().parents[2]


def _fail(message: str) -> SystemExit:
    return SystemExit(f"rotate: {message}")


def main(argv: list[str] | None = None) -> int:
    import os

    from settings import SettingsError, load
    from settings.stackfile import stack_file_config

    parser = argparse.ArgumentParser(prog="python -m components.users", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rot = sub.add_parser("rotate", help="set a new random password in Vault and the database")
    rot.add_argument("--stack", default=os.environ.get("PULUMI_STACK", "lab"))
    who = rot.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", metavar="LOCAL@DOMAIN", help="repeatable")
    who.add_argument("--all", action="store_true", help="every mailbox of the mail list")
    rot.add_argument("--psql", help="run sams-users here against this psql command instead of over SSH")
    rot.add_argument("--config-json", help=argparse.SUPPRESS)  # tests: the stack's config map as JSON
    args = parser.parse_args(argv)

    raw = json.loads(args.config_json) if args.config_json else stack_file_config(args.stack, PROJECT)
    try:
        # Rotation needs Vault's token (VAULT_TOKEN) and SSH, none of the stack's own secrets.
        settings = load(args.stack, raw, PROJECT, secrets_required=False)
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    listed = sorted(f"{u.name}@{d.name}" for d, u in settings.mail.mailboxes)
    targets = listed if args.all else sorted(set(args.user))
    unknown = [a for a in targets if a not in listed]
    if unknown:
        raise _fail(f"not in {settings.mail_list_file}: {', '.join(unknown)}")
    vault = settings.config.vault
    address, token = resolve_address(vault.address), os.environ.get("VAULT_TOKEN")
    if not address or not token:
        raise _fail("set sams:vault.address (or VAULT_ADDR) and VAULT_TOKEN")
    store = Store(VaultTarget(address, token, vault.mount, vault.prefix))

    old = dict(zip(targets, parallel(store.read, targets), strict=True))
    new = {a: generate_password() for a in targets}
    scheme = settings.config.users.password_scheme
    hashes = dict(zip(targets, parallel(lambda a: hash_password(new[a], scheme), targets), strict=True))
    parallel(lambda a: store.write(a, new[a]), targets)

    if args.psql:
        cmd = [sys.executable, str(TOOL_SOURCE), "set-hashes", "--psql", args.psql]
    else:
        cfg = settings.config
        cmd = ["ssh", f"{cfg.admin_user}@{cfg.wireguard.address}", "sudo", "-n", "/usr/bin/python3", TOOL, "set-hashes"]
    result = subprocess.run(cmd, input=json.dumps({"hashes": hashes}).encode(), capture_output=True, check=False)
    if result.returncode != 0:
        # Put the previous passwords back (as a new version) so Vault matches the database again.
        parallel(lambda a: store.write(a, old[a]) if old[a] is not None else store.delete(a), targets)
        raise _fail(f"database update failed, Vault restored: {result.stderr.decode(errors='replace').strip()}")
    if result.stderr.strip():  # stored, with a warning (e.g. Dovecot's cache not flushed): pass it on
        print(result.stderr.decode(errors="replace").strip(), file=sys.stderr)
    print(json.dumps({"rotated": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
