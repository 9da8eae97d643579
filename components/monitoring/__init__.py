"""Monitoring component: node_exporter with SAMS's own metrics, Prometheus and Alertmanager on the
tunnel (`sams:monitoring`, docs/monitoring.md).

* the packages step, then the step (components/monitoring/steps.py); its secrets reach the host only on stdin: the
  Slack-compatible webhook URL (`sams:monitoringWebhookUrl`), the dead man's switch URL
  (`sams:monitoringHeartbeatUrl`) and, for e-mail through the relay,
  `sams:relayPassword`;
* with `mode: external`, `external` holds the scrape jobs and rules file for the owner's own
  Prometheus (the stack output `monitoring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.keys.rotation import DkimPhase
from components.mail.services import RSPAMD_METRICS_PASSWORD
from components.monitoring.plan import HEARTBEAT_URL, PUBLIC_IPV4, SMTP_PASSWORD, WEBHOOK_URL
from components.monitoring.steps import external_config, late_values, monitoring_step, packages_step
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from settings import Settings


@dataclass(frozen=True)
class MonitoringArgs:
    settings: Settings
    tunnel: Tunnel
    webhook_url: pulumi.Input[str] | None = None  # the secret sams:monitoringWebhookUrl
    heartbeat_url: pulumi.Input[str] | None = None  # the secret sams:monitoringHeartbeatUrl
    relay_password: pulumi.Input[str] | None = None  # the secret sams:relayPassword
    rspamd_metrics_password: pulumi.Input[str] | None = None  # Rspamd's read-only password (components/mail)
    public_ipv4: pulumi.Input[str] | None = None  # the host's public IPv4, asked of the blocklists
    dkim_phase: DkimPhase | None = None  # the run's DKIM rotation phase (a metric, and its due date)
    after: Sequence[pulumi.Resource] = ()


class Monitoring(pulumi.ComponentResource):
    external: dict[str, str] | None = None

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:monitoring:Monitoring", name, None, opts)
        mon = args.settings.config.monitoring
        webhook, heartbeat = args.webhook_url is not None, args.heartbeat_url is not None
        spec = monitoring_step(args.settings, webhook=webhook, heartbeat=heartbeat, dkim=args.dkim_phase)
        given: dict[str, pulumi.Input[str] | None] = {
            WEBHOOK_URL: args.webhook_url,
            HEARTBEAT_URL: args.heartbeat_url,
            SMTP_PASSWORD: args.relay_password or "",
            RSPAMD_METRICS_PASSWORD: args.rspamd_metrics_password,
            PUBLIC_IPV4: args.public_ipv4,
        }
        late = {
            n: pulumi.Output.secret(given[n] or "")
            for n in late_values(args.settings, webhook=webhook, heartbeat=heartbeat)
        }
        after: Sequence[pulumi.Resource] = args.after
        packages = packages_step(args.settings)
        if packages is not None:
            self.packages = RemoteStep(
                f"{name}-{packages.name}",
                RemoteStepArgs(packages, args.tunnel, after=after),
                pulumi.ResourceOptions(parent=self),
            )
            after = [*after, self.packages]
        self.step = RemoteStep(
            f"{name}-{spec.name}",
            RemoteStepArgs(spec, args.tunnel, late=late, after=after),
            pulumi.ResourceOptions(parent=self),
        )
        if mon.enabled and mon.mode == "external":
            self.external = external_config(args.settings)
        self.register_outputs({"external": self.external})
