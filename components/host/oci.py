"""Oracle Cloud: VCN, internet gateway, route table, security list, instance and a data volume.

OCI offers no PTR through its API for ephemeral public IPs: docs/dns_checklist.md lists the
manual request.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pulumi
import pulumi_oci as oci

from components.firewall import ANY_V4, Firewall, FirewallArgs

if TYPE_CHECKING:
    from components.host import Host, HostArgs


def build_oci(host: Host, name: str, args: HostArgs) -> None:
    cfg = args.settings.config
    o = cfg.oci
    assert o is not None
    child = pulumi.ResourceOptions(parent=host)
    vcn = oci.core.Vcn(
        f"{name}-vcn",
        compartment_id=o.compartment_id,
        cidr_blocks=[str(o.vcn_cidr)],
        display_name="sams",
        dns_label="sams",
        opts=child,
    )
    gateway = oci.core.InternetGateway(
        f"{name}-igw", compartment_id=o.compartment_id, vcn_id=vcn.id, enabled=True, display_name="sams", opts=child
    )
    routes = oci.core.RouteTable(
        f"{name}-routes",
        compartment_id=o.compartment_id,
        vcn_id=vcn.id,
        display_name="sams",
        route_rules=[
            oci.core.RouteTableRouteRuleArgs(
                network_entity_id=gateway.id, destination=ANY_V4, destination_type="CIDR_BLOCK"
            )
        ],
        opts=child,
    )
    host.firewall = Firewall(f"{name}-firewall", FirewallArgs(args.settings, oci_vcn_id=vcn.id), child)
    assert host.firewall.oci_security_list_id is not None
    subnet = oci.core.Subnet(
        f"{name}-subnet",
        compartment_id=o.compartment_id,
        vcn_id=vcn.id,
        cidr_block=str(o.subnet_cidr),
        route_table_id=routes.id,
        security_list_ids=[host.firewall.oci_security_list_id],
        display_name="sams-public",
        dns_label="mail",
        opts=child,
    )
    user_data_b64 = pulumi.Output.secret(args.user_data).apply(lambda u: base64.b64encode(u.encode()).decode())
    instance = oci.core.Instance(
        f"{name}-instance",
        availability_domain=o.availability_domain,
        compartment_id=o.compartment_id,
        shape=o.shape,
        display_name=cfg.hostname,
        shape_config=oci.core.InstanceShapeConfigArgs(ocpus=o.ocpus, memory_in_gbs=o.memory_gbs),
        source_details=oci.core.InstanceSourceDetailsArgs(
            source_type="image", source_id=o.image_id, boot_volume_size_in_gbs=str(o.boot_volume_gbs)
        ),
        create_vnic_details=oci.core.InstanceCreateVnicDetailsArgs(
            subnet_id=subnet.id, assign_public_ip="true", hostname_label=cfg.hostname.split(".", 1)[0]
        ),
        metadata={"ssh_authorized_keys": "\n".join(cfg.admin_ssh_keys), "user_data": user_data_b64},
        opts=pulumi.ResourceOptions(parent=host, additional_secret_outputs=["metadata"]),
    )
    # Mail lives on its own volume, so the instance can be rebuilt without touching mailboxes.
    volume = oci.core.Volume(
        f"{name}-mail-data",
        availability_domain=o.availability_domain,
        compartment_id=o.compartment_id,
        size_in_gbs=str(o.data_volume_gbs),
        display_name="sams-mail-data",
        opts=pulumi.ResourceOptions(parent=host, protect=True),
    )
    oci.core.VolumeAttachment(
        f"{name}-mail-data-attachment",
        attachment_type="paravirtualized",
        instance_id=instance.id,
        volume_id=volume.id,
        device="/dev/oracleoci/oraclevdb",
        opts=child,
    )
    host.public_ipv4 = instance.public_ip
    host.public_ipv6 = pulumi.Output.from_input(None)
    host.has_ipv6 = False
    host.instance_id = instance.id
