"""Firewall component: the cloud side of the port policy; the host side is nftables (cloud-init).

Both are rendered from components.firewall.policy, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.firewall.policy import Port, nftables_conf, public_ports
from settings import Settings

ANY_V4 = "0.0.0.0/0"
ANY_V6 = "::/0"


@dataclass(frozen=True)
class FirewallArgs:
    settings: Settings
    oci_vcn_id: pulumi.Input[str] | None = None  # required when provider is oci


class Firewall(pulumi.ComponentResource):
    vultr_group_id: pulumi.Output[str] | None = None
    oci_security_list_id: pulumi.Output[str] | None = None

    def __init__(self, name: str, args: FirewallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:firewall:Firewall", name, None, opts)
        cfg = args.settings.config
        ports = public_ports(cfg)
        self.nftables = nftables_conf(cfg)
        if cfg.provider == "vultr":
            self._vultr(name, ports)
        elif cfg.provider == "oci":
            if args.oci_vcn_id is None:
                raise ValueError("an OCI firewall needs the VCN id")
            self._oci(name, ports, args)
        # provider "existing": no cloud firewall; nftables on the host is the only layer.
        self.public_ports = [f"{p.number}/{p.proto}" for p in ports]
        self.register_outputs({"publicPorts": self.public_ports})

    def _vultr(self, name: str, ports: tuple[Port, ...]) -> None:
        import ediri_vultr as vultr

        group = vultr.FirewallGroup(
            f"{name}-group", description="SAMS mail host", opts=pulumi.ResourceOptions(parent=self)
        )
        for port in ports:
            for ip_type, subnet in (("v4", "0.0.0.0"), ("v6", "::")):
                vultr.FirewallRule(
                    f"{name}-{port.proto}-{port.number}-{ip_type}",
                    firewall_group_id=group.id,
                    ip_type=ip_type,
                    protocol=port.proto,
                    subnet=subnet,
                    subnet_size=0,
                    port=str(port.number),
                    notes=port.service,
                    opts=pulumi.ResourceOptions(parent=group),
                )
        self.vultr_group_id = group.id

    def _oci(self, name: str, ports: tuple[Port, ...], args: FirewallArgs) -> None:
        import pulumi_oci as oci

        cfg = args.settings.config
        assert cfg.oci is not None
        rules = []
        for port in ports:
            rules.append(
                oci.core.SecurityListIngressSecurityRuleArgs(
                    protocol="6" if port.proto == "tcp" else "17",
                    source=ANY_V4,
                    source_type="CIDR_BLOCK",
                    description=port.service,
                    tcp_options=oci.core.SecurityListIngressSecurityRuleTcpOptionsArgs(min=port.number, max=port.number)
                    if port.proto == "tcp"
                    else None,
                    udp_options=oci.core.SecurityListIngressSecurityRuleUdpOptionsArgs(min=port.number, max=port.number)
                    if port.proto == "udp"
                    else None,
                )
            )
        # Path-MTU discovery (ICMP 3/4): without it large TLS records stall behind small-MTU links.
        rules.append(
            oci.core.SecurityListIngressSecurityRuleArgs(
                protocol="1",
                source=ANY_V4,
                description="path-mtu-discovery",
                icmp_options=oci.core.SecurityListIngressSecurityRuleIcmpOptionsArgs(type=3, code=4),
            )
        )
        security_list = oci.core.SecurityList(
            f"{name}-security-list",
            compartment_id=cfg.oci.compartment_id,
            vcn_id=args.oci_vcn_id,
            display_name="sams-mail",
            ingress_security_rules=rules,
            egress_security_rules=[oci.core.SecurityListEgressSecurityRuleArgs(destination=ANY_V4, protocol="all")],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.oci_security_list_id = security_list.id
