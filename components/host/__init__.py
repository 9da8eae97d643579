"""Host component: the mail server itself, on Vultr, Oracle Cloud, or an existing machine.

Each provider's SDK is imported only in its own branch: importing them all would cost seconds
on every `pulumi preview`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.firewall import Firewall, FirewallArgs
from settings import Settings


@dataclass(frozen=True)
class HostArgs:
    settings: Settings
    user_data: pulumi.Input[str]  # secret: it carries the host's private keys


class Host(pulumi.ComponentResource):
    public_ipv4: pulumi.Output[str]
    public_ipv6: pulumi.Output[str | None]
    has_ipv6: bool  # known at evaluation time, so the DNS plan knows whether to publish AAAA
    # Which machine this is (a Vultr or OCI instance id): a new one re-runs every remote step.
    instance_id: pulumi.Output[str]
    firewall: Firewall

    def __init__(self, name: str, args: HostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:host:Host", name, None, opts)
        cfg = args.settings.config
        if cfg.provider == "vultr":
            from components.host.vultr import build_vultr

            build_vultr(self, name, args)
        elif cfg.provider == "oci":
            from components.host.oci import build_oci

            build_oci(self, name, args)
        else:
            assert cfg.existing is not None
            self.firewall = Firewall(
                f"{name}-firewall", FirewallArgs(args.settings), pulumi.ResourceOptions(parent=self)
            )
            self.public_ipv4 = pulumi.Output.from_input(str(cfg.existing.ipv4))
            self.public_ipv6 = pulumi.Output.from_input(str(cfg.existing.ipv6) if cfg.existing.ipv6 else None)
            self.has_ipv6 = cfg.existing.ipv6 is not None
            # SAMS cannot tell one existing machine from another at the same address: the address is its identity.
            self.instance_id = pulumi.Output.from_input(f"existing:{cfg.existing.ipv4}")
        self.vpn_address = str(cfg.wireguard.address)
        self.register_outputs(
            {
                "publicIpv4": self.public_ipv4,
                "publicIpv6": self.public_ipv6,
                "vpnAddress": self.vpn_address,
                "instanceId": self.instance_id,
            }
        )
