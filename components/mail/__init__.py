"""Mail services component: Postfix, Dovecot, OpenDKIM, Rspamd/Redis, each as remote steps.

The daemons' configuration comes with the mail-core issue; what exists now is the DKIM signing
material, delivered the only way secrets reach the host: on stdin to `sams-apply`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.keys.resources import DkimKey
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from components.remote.steps import File, StepSpec, late


def dkim_step(keys: dict[str, DkimKey]) -> StepSpec:
    """OpenDKIM's private keys, one per domain, readable by the opendkim user only."""
    files = tuple(
        File(
            f"/etc/dkimkeys/{domain}/{key.selector}.private",
            late(_late_name(domain)),
            mode="0600",
            owner="root",
            group="root",
        )
        for domain, key in sorted(keys.items())
    )
    return StepSpec(
        name="dkim-keys",
        files=files,
        late_values=tuple(_late_name(d) for d in sorted(keys)),
        description="DKIM private keys for OpenDKIM",
    )


def _late_name(domain: str) -> str:
    return "dkim_" + domain.replace(".", "_").replace("-", "_")


@dataclass(frozen=True)
class MailArgs:
    tunnel: Tunnel
    dkim: dict[str, DkimKey]
    after: tuple[pulumi.Resource, ...] = ()


class Mail(pulumi.ComponentResource):
    def __init__(self, name: str, args: MailArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:mail:Mail", name, None, opts)
        spec = dkim_step(args.dkim)
        self.dkim_keys = RemoteStep(
            f"{name}-{spec.name}",
            RemoteStepArgs(
                spec,
                args.tunnel,
                late={_late_name(d): k.private_pem for d, k in args.dkim.items()},
                after=args.after,
            ),
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"steps": [spec.name]})
