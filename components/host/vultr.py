"""Vultr: an instance with IPv6, the port policy's firewall group, and reverse DNS = mail hostname."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ediri_vultr as vultr
import pulumi

from components.firewall import Firewall, FirewallArgs

if TYPE_CHECKING:
    from components.host import Host, HostArgs


def build_vultr(host: Host, name: str, args: HostArgs) -> None:
    cfg = args.settings.config
    assert cfg.vultr is not None
    child = pulumi.ResourceOptions(parent=host)
    host.firewall = Firewall(f"{name}-firewall", FirewallArgs(args.settings), child)
    keys = [
        vultr.SSHKey(f"{name}-admin-key-{i}", name=f"sams-{cfg.admin_user}-{i}", ssh_key=key, opts=child)
        for i, key in enumerate(cfg.admin_ssh_keys)
    ]
    instance = vultr.Instance(
        f"{name}-instance",
        region=cfg.vultr.region,
        plan=cfg.vultr.plan,
        os_id=cfg.vultr.os_id,
        hostname=cfg.hostname,
        label=cfg.hostname,
        enable_ipv6=cfg.vultr.enable_ipv6,
        firewall_group_id=host.firewall.vultr_group_id,
        ssh_key_ids=[k.id for k in keys],
        user_data=args.user_data,
        # Backups are SAMS's own job (sams:backup); Vultr's snapshots cost extra.
        backups="disabled",
        tags=["sams", "mail"],
        opts=pulumi.ResourceOptions(parent=host, additional_secret_outputs=["userData"]),
    )
    # PTR = mail hostname = HELO: receivers check that the three agree.
    vultr.ReverseIpv4(f"{name}-ptr-v4", instance_id=instance.id, ip=instance.main_ip, reverse=cfg.hostname, opts=child)
    host.public_ipv4 = instance.main_ip
    if cfg.vultr.enable_ipv6:
        vultr.ReverseIpv6(
            f"{name}-ptr-v6", instance_id=instance.id, ip=instance.v6_main_ip, reverse=cfg.hostname, opts=child
        )
        host.public_ipv6 = instance.v6_main_ip.apply(lambda v: v or None)
    else:
        host.public_ipv6 = pulumi.Output.from_input(None)
    host.has_ipv6 = cfg.vultr.enable_ipv6
    host.instance_id = instance.id
