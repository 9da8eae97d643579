"""Users component: mailbox passwords in Vault, first-password hashes in the database, offboarding.

  * `MailboxSecrets` (components/users/provider.py): ONE dynamic resource for the whole list;
    hvac writes to Vault only in create/update, so a preview never writes.
  * the `users` step: `sams-users sync` on the host, fed the new hashes and the removed addresses
    on stdin (never in a file Pulumi copies), after the database step has synced the list.
  * a preview warning naming every mailbox that will be offboarded: the addresses with a secret in
    Vault (a read-only LIST) that are no longer in the mail list.

Admins rotate passwords with `python -m components.users rotate` (components/users/__main__.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import Resource
from pulumi_command import remote

from components.remote import Tunnel, build_root
from components.remote.steps import STAGE_ROOT, digest, stage
from components.users.provider import MailboxSecretsProvider
from components.users.steps import ARCHIVE_ROOT, sync_command, users_step
from components.users.vault import Store, VaultTarget, resolve_address, resolve_token
from settings import Settings


def mailboxes(settings: Settings) -> dict[str, list[str]]:
    """domain -> sorted local parts: `pulumi preview --diff` then names each mailbox that leaves."""
    return {d.name: sorted(u.name for u in d.users) for d in settings.mail.domains}


def leaving(listed: dict[str, list[str]], in_vault: list[str]) -> list[str]:
    keep = {f"{u}@{d}" for d, users in listed.items() for u in users}
    return sorted(a for a in in_vault if a not in keep)


def offboarding_notice(addresses: list[str]) -> str:
    return (
        f"users: {len(addresses)} mailbox(es) left the mail list and will be offboarded on `up`: disabled, "
        f"Maildir moved to {ARCHIVE_ROOT}/<domain>/<user>-<date>, Vault secret deleted: " + ", ".join(addresses)
    )


def preview_offboarding(settings: Settings, token: str | None) -> list[str]:
    """Warn about (and return) the mailboxes that leave; reads Vault, never writes. Skipped without Vault."""
    vault = settings.config.vault
    address = resolve_address(vault.address)
    if not address or not token:
        return []
    try:
        found = Store(VaultTarget(address, token, vault.mount, vault.prefix)).addresses()
    except Exception as exc:  # a preview must not fail because Vault is unreachable
        pulumi.log.warn(f"users: could not list Vault secrets to preview offboarding: {exc}")
        return []
    gone = leaving(mailboxes(settings), found)
    if gone:
        pulumi.log.warn(offboarding_notice(gone))
    return gone


class MailboxSecrets(Resource):
    hashes: pulumi.Output[dict[str, str]]
    removed: pulumi.Output[list[str]]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["hashes", "token"]))
        super().__init__(MailboxSecretsProvider(), name, {**props, "hashes": None, "removed": None}, opts)


@dataclass(frozen=True)
class UsersArgs:
    settings: Settings
    tunnel: Tunnel
    after: Sequence[pulumi.Resource] = ()


class Users(pulumi.ComponentResource):
    def __init__(self, name: str, args: UsersArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:users:Users", name, None, opts)
        from pulumi.runtime import config as runtime_config

        settings = args.settings
        vault = settings.config.vault
        token = resolve_token(runtime_config.get_config("sams:vaultToken"))
        self.leaving = preview_offboarding(settings, token)
        self.secrets = MailboxSecrets(
            f"{name}-secrets",
            {
                "mailboxes": mailboxes(settings),
                "vault": {"address": resolve_address(vault.address), "mount": vault.mount, "prefix": vault.prefix},
                "scheme": settings.config.users.password_scheme,
                "token": pulumi.Output.secret(token) if token else None,
            },
            pulumi.ResourceOptions(parent=self),
        )

        # A remote step whose stdin is the provider's output, not late values: 10,000 hashes are
        # ~1.4 MB, more than sams-apply may put in one environment variable (128 KiB).
        spec = users_step(settings)
        content = digest(spec)
        local_dir = stage(spec, build_root(pulumi.get_stack()))
        conn = args.tunnel.connection()
        self.copy = remote.CopyToRemote(
            f"{name}-{spec.name}-copy",
            connection=conn,
            source=pulumi.FileArchive(str(local_dir)),
            remote_path=STAGE_ROOT,
            triggers=[content, *args.tunnel.identity()],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after)),
        )
        stdin: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(self.secrets.hashes, self.secrets.removed).apply(
                lambda v: json.dumps({"hashes": v[0] or {}, "removed": v[1] or []}, sort_keys=True)
            )
        )
        self.command = remote.Command(
            f"{name}-{spec.name}-apply",
            connection=conn,
            create=sync_command(spec, settings),
            stdin=stdin,
            triggers=[
                content,
                *args.tunnel.identity(),
                stdin.apply(lambda s: hashlib.sha256(s.encode()).hexdigest()),
            ],
            logging=remote.Logging.NONE,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.copy, self.secrets]),
        )
        self.summary = self.command.stdout
        self.register_outputs({"summary": self.command.stdout})


__all__ = ["MailboxSecrets", "Users", "UsersArgs", "leaving", "mailboxes", "offboarding_notice"]
