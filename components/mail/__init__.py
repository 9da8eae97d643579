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
from components.keys.rotation import DkimPhase
from components.mail.services import (
    DB_DOVECOT_PASSWORD,
    DB_POSTFIX_PASSWORD,
    RELAY_PASSWORD,
    RSPAMD_CONTROLLER_PASSWORD,
    RSPAMD_METRICS_PASSWORD,
    dkim_key_path,
    mail_packages_step,
    mail_steps,
)
from components.remote import RemoteStep, Tunnel, chain
from components.remote.steps import File, StepSpec, late
from settings import Settings


def dkim_late_name(domain: str, selector: str | None = None) -> str:
    """How a DKIM key travels on stdin: `dkim_<domain>` is the key OpenDKIM signs with; a key that
    is only published (the other half of a rotation) is `dkim_<domain>__<selector>`."""
    name = "dkim_" + domain.replace(".", "_").replace("-", "_")
    return name if selector is None else f"{name}__{selector.replace('-', '_')}"


def dkim_keys_to_send(
    signing: Mapping[str, DkimKey], published: Mapping[str, Sequence[DkimKey]] | None = None
) -> list[tuple[str, str, DkimKey]]:
    """(domain, late name, key) for every key the host gets: per domain the signing key, then any
    other published selector's."""
    out = []
    for domain, key in sorted(signing.items()):
        out.append((domain, dkim_late_name(domain), key))
        others = (published or {}).get(domain, ())
        out += [(domain, dkim_late_name(domain, k.selector), k) for k in others if k.selector != key.selector]
    return out


def dkim_step(signing: Mapping[str, DkimKey], published: Mapping[str, Sequence[DkimKey]] | None = None) -> StepSpec:
    """OpenDKIM's private keys, readable by the opendkim user only: per domain the signing key and,
    during a rotation, the other published selector's (components/keys/rotation.py)."""
    keys = dkim_keys_to_send(signing, published)
    files = tuple(
        File(dkim_key_path(domain, key.selector), late(name), mode="0600", owner="opendkim", group="opendkim")
        for domain, name, key in keys
    )
    return StepSpec(
        name="dkim-keys",
        files=files,
        late_values=tuple(name for _, name, _ in keys),
        description="DKIM private keys for OpenDKIM",
    )


@dataclass(frozen=True)
class MailArgs:
    settings: Settings
    tunnel: Tunnel
    dkim: Mapping[str, DkimKey]  # the signing key per domain
    db_passwords: Mapping[str, pulumi.Output[str]]
    relay_password: pulumi.Input[str] | None = None
    after: Sequence[pulumi.Resource] = ()
    # During a DKIM rotation: every published key per domain, and the phase (components/keys/rotation.py).
    dkim_published: Mapping[str, Sequence[DkimKey]] | None = None
    dkim_phase: DkimPhase | None = None


class Mail(pulumi.ComponentResource):
    def __init__(self, name: str, args: MailArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:mail:Mail", name, None, opts)
        controller = random.RandomPassword(
            f"{name}-rspamd-controller-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        reader = random.RandomPassword(
            f"{name}-rspamd-metrics-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        # Rspamd's read-only password: the monitoring step gives it to nginx for /metrics.
        self.rspamd_metrics_password: pulumi.Output[str] = pulumi.Output.secret(reader.result)
        values: dict[str, pulumi.Input[str]] = {
            DB_POSTFIX_PASSWORD: args.db_passwords["postfix"],
            DB_DOVECOT_PASSWORD: args.db_passwords["dovecot"],
            RSPAMD_CONTROLLER_PASSWORD: pulumi.Output.secret(controller.result),
            RSPAMD_METRICS_PASSWORD: self.rspamd_metrics_password,
            **{name: k.private_pem for _, name, k in dkim_keys_to_send(args.dkim, args.dkim_published)},
        }
        if args.relay_password is not None:
            values[RELAY_PASSWORD] = pulumi.Output.secret(args.relay_password)
        assert password_late_name("postfix") == DB_POSTFIX_PASSWORD

        specs = (
            mail_packages_step(args.settings),
            dkim_step(args.dkim, args.dkim_published),
            *mail_steps(args.settings, args.dkim_phase),
        )
        self.steps: list[RemoteStep] = chain(name, specs, args.tunnel, values, after=args.after, parent=self)
        self.register_outputs({"steps": [s.name for s in specs]})
