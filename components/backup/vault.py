"""The restic repository password in Vault, beside the mailbox passwords: losing the host (and the
machine Pulumi runs on) must not lose the key every snapshot is encrypted with.

One KV v2 secret per mail host, at `<sams:vault.mount>/data/sams/backup/<hostname>` (default
`secret/data/sams/backup/mail.example.org`), holding `{"password": ..., "repository": ...}`: the
repository URL as the host's tool logs it (no credential in it), so the secret says which
repository the password opens.

`BackupKeyInVault` is a dynamic resource (components/users/provider.py says why: Vault is reached
from where Pulumi runs, and its token never goes to the mail host). Like the mailbox secrets, it
writes only in create/update (a preview calls check and diff, neither of which touches Vault), and
its delete leaves the secret alone: the key must outlive the stack.

Writes are check-and-set, so a run never replaces a password it did not write:
  * no secret yet: written with cas=0;
  * the same password: left as it is (a changed repository URL is written as a new version);
  * a different password that this resource wrote (sams:backupPassword changed): a new version,
    cas=<the version read>; KV v2 keeps the earlier ones;
  * a different password it did not write (a stack re-created from nothing generated a new one,
    or someone changed the secret): the run fails, naming the secret and how to go on, because the
    snapshots already in that repository open only with the stored password;
  * a latest version deleted (`vault kv delete`, which keeps it for `vault kv undelete`): the run
    fails too, rather than bury it under a new version.
"""

from __future__ import annotations

import os
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult

from components.users.vault import VaultTarget, resolve_address, resolve_token
from settings import Settings

RESOURCE_ID = "sams-backup-key"
PREFIX = "sams/backup"  # under the mount, beside (not inside) the mailbox prefix
COMPARED = ("password", "repository", "hostname", "vault")  # a change in any of these writes Vault
NO_VAULT = (
    "backup: no Vault to keep the repository password in (it is only in the stack's state): set "
    "sams:vault.address and the secret sams:vaultToken (or VAULT_ADDR / VAULT_TOKEN), see docs/vault_setup_guide.md"
)


def key_path(hostname: str) -> str:
    """The secret's path under the KV v2 mount."""
    return f"{PREFIX}/{hostname}"


def _target(props: dict[str, Any]) -> VaultTarget:
    vault = props.get("vault") or {}
    address = vault.get("address") or os.environ.get("VAULT_ADDR")
    token = props.get("token") or os.environ.get("VAULT_TOKEN")
    if not address or not token:
        raise RuntimeError(NO_VAULT.removeprefix("backup: "))
    return VaultTarget(address, token, vault.get("mount") or "secret")


def _read(kv: Any, path: str, mount: str) -> tuple[dict[str, Any], int] | None:
    """(data, version) of the current version, None if there is none (never written, or deleted)."""
    import hvac.exceptions

    try:
        found = kv.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        return None
    return dict(found["data"]["data"] or {}), int(found["data"]["metadata"]["version"])


def conflict_message(hostname: str, mount: str, path: str, version: int) -> str:
    return (
        f"Vault already holds a different backup repository password for {hostname} at {mount}/{path} "
        f"(version {version}), one this stack did not write. The snapshots in that repository open only with it, "
        "so it is not overwritten. If this stack backs up to that repository, make it the stack's password: "
        f'pulumi config set --secret sams:backupPassword "$(vault kv get -field=password -mount={mount} {path})"; '
        f"if that repository is gone for good, delete the secret first: vault kv metadata delete -mount={mount} {path}"
    )


def write_key(props: dict[str, Any], olds: dict[str, Any] | None) -> int:
    """Store props' password and repository by the rules in the module docstring; the version now current."""
    target = _target(props)
    kv = target.client().secrets.kv.v2
    path = key_path(str(props["hostname"]))
    wanted = {"password": props["password"], "repository": props["repository"]}
    current = _read(kv, path, target.mount)
    if current is None:
        cas = 0
    else:
        data, version = current
        if data == wanted:
            return version
        stored = data.get("password")
        ours = olds.get("password") if olds is not None and olds.get("hostname") == props["hostname"] else None
        if stored is not None and stored not in (props["password"], ours):
            raise RuntimeError(conflict_message(str(props["hostname"]), target.mount, path, version))
        cas = version  # fails if someone writes between this read and the write
    import hvac.exceptions

    try:
        written = kv.create_or_update_secret(path=path, secret=wanted, cas=cas, mount_point=target.mount)
    except hvac.exceptions.InvalidRequest as exc:
        if "check-and-set" not in str(exc):
            raise
        # Written since the read, or its latest version deleted (KV v2 keeps it: `vault kv undelete`).
        raise RuntimeError(
            f"the backup password secret {target.mount}/{path} changed, or its latest version was deleted, while "
            f"this run wrote it: nothing was overwritten; look at `vault kv metadata get -mount={target.mount} {path}`"
        ) from exc
    return int(written["data"]["version"])


class BackupKeyProvider(ResourceProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [
            CheckFailure(key, "must be a non-empty string")
            for key in ("password", "repository", "hostname")
            if not isinstance(news.get(key), str) or not news[key]
        ]
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = any(olds.get(k) != news.get(k) for k in COMPARED)
        # Never a replacement: a replacement's delete would be a no-op anyway, and its create a blind write.
        return DiffResult(changes=changed, replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = {**props, "path": key_path(props["hostname"]), "version": write_key(props, None)}
        return CreateResult(RESOURCE_ID, outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, "path": key_path(news["hostname"]), "version": write_key(news, olds)})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None  # the key outlives the resource and the stack: see the module docstring


class BackupKeyInVault(pulumi.dynamic.Resource):
    path: pulumi.Output[str]
    version: pulumi.Output[int]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["password", "token"])
        )
        super().__init__(BackupKeyProvider(), name, {**props, "path": None, "version": None}, opts)


def store_backup_key(
    name: str,
    settings: Settings,
    password: pulumi.Output[str],
    repository: pulumi.Output[str],
    parent: pulumi.Resource,
) -> BackupKeyInVault | None:
    """`<name>-key-in-vault`, a child of `parent`; None (with a warning) when no Vault is configured.

    `repository` must carry no credential: pass the redacted URL (components.backup.plan.redact).
    """
    from pulumi.runtime import config as runtime_config

    vault = settings.config.vault
    address = resolve_address(vault.address)
    token = resolve_token(runtime_config.get_config("sams:vaultToken"))
    if not address or not token:
        pulumi.log.warn(NO_VAULT, resource=parent)
        return None
    return BackupKeyInVault(
        f"{name}-key-in-vault",
        {
            "password": pulumi.Output.secret(password),
            "repository": repository,
            "hostname": str(settings.config.hostname),
            "vault": {"address": address, "mount": vault.mount},
            "token": pulumi.Output.secret(token),
        },
        pulumi.ResourceOptions(parent=parent),
    )


__all__ = ["PREFIX", "BackupKeyInVault", "BackupKeyProvider", "key_path", "store_backup_key", "write_key"]
