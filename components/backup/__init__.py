"""Backup component: nightly encrypted restic snapshots off the host, and the new-host restore.

* the repository: `sams:backup.repository` (with the secrets `sams:backupKeyId` and
  `sams:backupKeySecret` as its credential), or, with provider oci or vultr and no repository
  set, a bucket the program creates there (components/backup/storage.py);
* the repository password: the secret `sams:backupPassword`, or generated and kept in state;
  also written to Vault beside the mailbox passwords, so that losing the host and the stack's
  machine still leaves the key (components/backup/vault.py);
* for an SFTP repository, the host's SSH key (ED25519, generated and kept in state): its public half
  is the stack output `backup.sshPublicKey`, for the server's authorized_keys;
* the `backup` step (components/backup/steps.py): restic, sams-backup, its config and timer;
  secrets reach the host only on stdin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from components.backup.plan import (
    COPY_KEY_ID,
    COPY_KEY_SECRET,
    KEY_ID,
    KEY_SECRET,
    PASSWORD,
    REGION,
    REPOSITORY,
    SSH_KEY,
    backend,
    copy_credential_env,
    credential_env,
    redact,
    uses_sftp,
)
from components.backup.steps import backup_step
from components.backup.vault import store_backup_key
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from settings import Settings


@dataclass(frozen=True)
class BackupArgs:
    settings: Settings
    tunnel: Tunnel
    after: Sequence[pulumi.Resource] = ()


class Backup(pulumi.ComponentResource):
    repository: pulumi.Output[str] | None = None  # redacted: no credential in it
    ssh_public_key: pulumi.Output[str] | None = None  # SFTP: for the server's authorized_keys

    def __init__(self, name: str, args: BackupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:backup:Backup", name, None, opts)
        cfg = args.settings.config
        spec = backup_step(args.settings)
        late: dict[str, pulumi.Input[str]] = {}
        key_in_vault: pulumi.Resource | None = None
        if cfg.backup.enabled:
            secrets = pulumi.Config("sams")
            given = secrets.get_secret("backupPassword")
            if given is None:
                # Letters and digits: nothing a shell, a URL or a password manager could mangle.
                generated = random.RandomPassword(
                    f"{name}-password", length=40, special=False, opts=pulumi.ResourceOptions(parent=self)
                )
                given = generated.result
            self.password: pulumi.Output[str] = pulumi.Output.secret(given)
            region: str = ""
            if cfg.backup.repository is not None:
                url: pulumi.Input[str] = cfg.backup.repository
                key_id: pulumi.Input[str] = secrets.get_secret("backupKeyId") or ""
                key_secret: pulumi.Input[str] = secrets.get_secret("backupKeySecret") or ""
            else:
                from components.backup.storage import create_storage

                storage = create_storage(name, args.settings, self)
                url, key_id, key_secret = storage.repository, storage.key_id, storage.key_secret
                region = storage.region or ""
            self.repository = pulumi.Output.from_input(url).apply(redact)
            key_in_vault = store_backup_key(name, args.settings, self.password, self.repository, self)
            late = {PASSWORD: self.password, REPOSITORY: pulumi.Output.secret(url)}
            if credential_env(args.settings):  # SFTP has none: its login is the key below
                late[KEY_ID] = pulumi.Output.secret(key_id)
                late[KEY_SECRET] = pulumi.Output.secret(key_secret)
            if backend(args.settings) == "s3":
                late[REGION] = region
            if uses_sftp(args.settings):
                ssh = tls.PrivateKey(f"{name}-ssh", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self))
                late[SSH_KEY] = pulumi.Output.secret(ssh.private_key_openssh)
                self.ssh_public_key = ssh.public_key_openssh.apply(lambda k: f"{k.strip()} sams-backup@{cfg.hostname}")
            if copy_credential_env(args.settings):
                late[COPY_KEY_ID] = pulumi.Output.secret(secrets.get_secret("backupCopyKeyId") or "")
                late[COPY_KEY_SECRET] = pulumi.Output.secret(secrets.get_secret("backupCopyKeySecret") or "")
        # After the key is in Vault: no snapshot is encrypted with a password only the state holds.
        after = (*args.after, key_in_vault) if key_in_vault is not None else tuple(args.after)
        self.step = RemoteStep(
            f"{name}-{spec.name}",
            RemoteStepArgs(spec, args.tunnel, late=late, after=after),
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"repository": self.repository, "sshPublicKey": self.ssh_public_key})
