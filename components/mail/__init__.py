"""Mail services component: Postfix, Dovecot, OpenDKIM, Rspamd/Redis, each as remote steps.

Order on the host: packages -> DKIM keys -> base (vmail, certificate, milter sockets) ->
OpenDKIM -> Rspamd -> Dovecot -> Postfix. Each step reloads only its own daemon when its files
change. Secrets (DKIM keys, database and relay passwords, the Rspamd controller password) reach
the host only on stdin, never in a file that Pulumi copies or a command line it logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components.database.schema import password_late_name
from components.keys.resources import DkimKey
from components.mail.services import (
    DB_DOVECOT_PASSWORD,
    DB_POSTFIX_PASSWORD,
    DKIM_KEY_DIR,
    RELAY_PASSWORD,
    RSPAMD_CONTROLLER_PASSWORD,
    mail_packages_step,
    mail_steps,
)
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from components.remote.steps import File, StepSpec, late
from settings import Settings


def dkim_late_name(domain: str) -> str:
    return "dkim_" + domain.replace(".", "_").replace("-", "_")


def dkim_step(keys: Mapping[str, DkimKey]) -> StepSpec:
    """OpenDKIM's private keys, one per domain, readable by the opendkim user only."""
    files = tuple(
        File(
            f"{DKIM_KEY_DIR}/{domain}/{key.selector}.private",
            late(dkim_late_name(domain)),
            mode="0600",
            owner="opendkim",
            group="opendkim",
        )
        for domain, key in sorted(keys.items())
    )
    return StepSpec(
        name="dkim-keys",
        files=files,
        late_values=tuple(dkim_late_name(d) for d in sorted(keys)),
        description="DKIM private keys for OpenDKIM",
    )


@dataclass(frozen=True)
class MailArgs:
    settings: Settings
    tunnel: Tunnel
    dkim: Mapping[str, DkimKey]
    db_passwords: Mapping[str, pulumi.Output[str]]
    relay_password: pulumi.Input[str] | None = None
    after: Sequence[pulumi.Resource] = ()


class Mail(pulumi.ComponentResource):
    def __init__(self, name: str, args: MailArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:mail:Mail", name, None, opts)
        controller = random.RandomPassword(
            f"{name}-rspamd-controller-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        values: dict[str, pulumi.Input[str]] = {
            DB_POSTFIX_PASSWORD: args.db_passwords["postfix"],
            DB_DOVECOT_PASSWORD: args.db_passwords["dovecot"],
            RSPAMD_CONTROLLER_PASSWORD: pulumi.Output.secret(controller.result),
            **{dkim_late_name(d): k.private_pem for d, k in args.dkim.items()},
        }
        if args.relay_password is not None:
            values[RELAY_PASSWORD] = pulumi.Output.secret(args.relay_password)
        assert password_late_name("postfix") == DB_POSTFIX_PASSWORD

        specs = (mail_packages_step(), dkim_step(args.dkim), *mail_steps(args.settings))
        previous: Sequence[pulumi.Resource] = tuple(args.after)
        self.steps: list[RemoteStep] = []
        for spec in specs:
            missing = set(spec.late_values) - set(values)
            if missing:
                raise ValueError(f"step {spec.name} needs late values nobody provides: {sorted(missing)}")
            step = RemoteStep(
                f"{name}-{spec.name}",
                RemoteStepArgs(spec, args.tunnel, late={k: values[k] for k in spec.late_values}, after=previous),
                pulumi.ResourceOptions(parent=self),
            )
            self.steps.append(step)
            previous = (step,)
        self.register_outputs({"steps": [s.name for s in specs]})
