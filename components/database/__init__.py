"""Database component: PostgreSQL 17 in Docker, its roles and their program-generated passwords.

The container, schema and migrations are installed by the `postgres` step (mail-core issue);
this component owns the role passwords so every service step receives them on stdin.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random

from settings import Settings

# Read-only lookup roles for the mail daemons, and the owner role the program migrates with.
ROLES = ("sams_owner", "postfix", "dovecot")


@dataclass(frozen=True)
class DatabaseArgs:
    settings: Settings


class Database(pulumi.ComponentResource):
    passwords: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:database:Database", name, None, opts)
        self.image = args.settings.config.database.image
        # Listening only on loopback and the WireGuard address: never the public one.
        self.listen_addresses = ("127.0.0.1", str(args.settings.config.wireguard.address))
        self.passwords = {}
        for role in ROLES:
            # Alphanumeric only: the passwords land in Postfix and Dovecot config files unquoted.
            pw = random.RandomPassword(
                f"{name}-{role}-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
            )
            self.passwords[role] = pulumi.Output.secret(pw.result)
        self.register_outputs({"image": self.image, "listenAddresses": list(self.listen_addresses)})
