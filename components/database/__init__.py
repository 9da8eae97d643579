"""Database component: PostgreSQL 17 in Docker, its roles and their program-generated passwords.

The `postgres` step (components/database/steps.py) installs the container's unit, runs it with
host networking on 127.0.0.1 and the WireGuard address only, and applies the schema and the
mail list. Every role's password is generated here, kept in state as a secret, and reaches the
host only on the step's stdin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components.database.roles import ROLES, SUPERUSER
from components.database.schema import password_late_name
from components.database.steps import listen_addresses, postgres_step
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from settings import Settings


@dataclass(frozen=True)
class DatabaseArgs:
    settings: Settings
    tunnel: Tunnel
    after: Sequence[pulumi.Resource] = ()


class Database(pulumi.ComponentResource):
    passwords: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:database:Database", name, None, opts)
        self.image = args.settings.config.database.image
        # Listening only on loopback and the WireGuard address: never the public one.
        self.listen_addresses = listen_addresses(args.settings)
        self.passwords = {}
        for role in (SUPERUSER, *ROLES):
            # Alphanumeric only: the passwords land in Postfix and Dovecot config files unquoted.
            pw = random.RandomPassword(
                f"{name}-{role}-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
            )
            self.passwords[role] = pulumi.Output.secret(pw.result)
        spec = postgres_step(args.settings)
        self.step = RemoteStep(
            f"{name}-{spec.name}",
            RemoteStepArgs(
                spec,
                args.tunnel,
                late={password_late_name(role): pw for role, pw in self.passwords.items()},
                after=tuple(args.after),
            ),
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"image": self.image, "listenAddresses": list(self.listen_addresses)})
