"""The firewall step (pure): the port policy's nftables ruleset, re-applied on a running host.

cloud-init writes the same file at first boot (cloudinit/); this step carries later changes of the
policy (a feature that opens a port on the tunnel, a client-access change) to a host that exists.
"""

from __future__ import annotations

from components.firewall.policy import nftables_conf
from components.remote.steps import File, Service, StepSpec
from settings import Settings

NFTABLES_CONF = "/etc/nftables.conf"


def firewall_step(settings: Settings) -> StepSpec:
    return StepSpec(
        name="firewall",
        # The file replaces only the `inet sams` table (it deletes and redefines it in one transaction).
        files=(File(NFTABLES_CONF, nftables_conf(settings.config), mode="0755"),),
        services=(Service("nftables.service", (NFTABLES_CONF,), "reload"),),
        description="nftables from the port policy",
    )


__all__ = ["NFTABLES_CONF", "firewall_step"]
