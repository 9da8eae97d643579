"""The remote step primitive: CopyToRemote + remote.Command over the WireGuard tunnel.

Every change after first boot reaches the host through a RemoteStep. Both resources carry the
step's content hash in `triggers`, so an unchanged step is a no-op and a changed one re-runs
`sams-apply` (the Pulumi twin of an Ansible handler). The triggers also carry the host's identity
(`Tunnel.host_id`), so a replaced host (`pulumi up --replace`, or a lost instance re-created after
`pulumi refresh`) gets every step again: its content is unchanged, but the machine is new.
Secrets travel only on stdin, and steps that carry them log nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
from pulumi_command import remote

from components.remote.steps import STAGE_ROOT, StepSpec, apply_command, digest, stage

PROJECT_DIR = Path(__file__).resolve().parents[2]

# pulumi-command retries the dial while the host boots and cloud-init brings wg0 up.
DIAL_ERROR_LIMIT = 60
PER_DIAL_TIMEOUT = 10


def build_root(stack: str) -> Path:
    """Where steps are staged locally before CopyToRemote ships them."""
    base = Path(os.environ.get("SAMS_BUILD_DIR", PROJECT_DIR / ".sams" / "build"))
    return base / stack


@dataclass(frozen=True)
class Tunnel:
    """How every step reaches the host: its WireGuard address, pinned host key, optional bastion."""

    host: str
    user: str
    host_key: pulumi.Input[str]
    private_key: pulumi.Input[str] | None = None  # None: use the SSH agent
    proxy: remote.ProxyConnectionArgs | None = None
    # The host's identity (Host.instance_id): a new machine at the same address re-runs every step.
    host_id: pulumi.Input[str] | None = None

    def identity(self) -> list[pulumi.Input[str]]:
        """What every step adds to its triggers so that a new host is configured again: [host_id] or []."""
        return [] if self.host_id is None else [self.host_id]

    def connection(self) -> pulumi.Output[remote.ConnectionArgs]:
        args = remote.ConnectionArgs(
            host=self.host,
            user=self.user,
            host_key=self.host_key,
            private_key=self.private_key,
            proxy=self.proxy,
            dial_error_limit=DIAL_ERROR_LIMIT,
            per_dial_timeout=PER_DIAL_TIMEOUT,
        )
        # A connection holds a private key: the whole object is a secret in state and in previews.
        return pulumi.Output.secret(args)


@dataclass(frozen=True)
class RemoteStepArgs:
    spec: StepSpec
    tunnel: Tunnel
    late: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    after: Sequence[pulumi.Resource] = ()


class RemoteStep(pulumi.ComponentResource):
    """One staged step: a CopyToRemote of its directory, then `sams-apply` on the host."""

    def __init__(self, name: str, args: RemoteStepArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:remote:Step", name, None, opts)
        spec = args.spec
        missing = set(spec.late_values) ^ set(args.late)
        if missing:
            raise ValueError(f"step {spec.name}: late values declared and given differ: {sorted(missing)}")
        content = digest(spec)
        local_dir = stage(spec, build_root(pulumi.get_stack()))
        conn = args.tunnel.connection()

        self.copy = remote.CopyToRemote(
            f"{name}-copy",
            connection=conn,
            source=pulumi.FileArchive(str(local_dir)),
            # An existing directory: the step's folder lands inside it as <STAGE_ROOT>/<step>.
            remote_path=STAGE_ROOT,
            triggers=[content, *args.tunnel.identity()],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after)),
        )

        stdin: pulumi.Output[str] | None = None
        triggers: list[pulumi.Input[str]] = [content, *args.tunnel.identity()]
        if spec.late_values:
            stdin = pulumi.Output.secret(
                pulumi.Output.all(**dict(args.late)).apply(lambda v: json.dumps(v, sort_keys=True))
            )
            # Rotating a password changes this hash, which re-runs the step.
            triggers.append(stdin.apply(lambda s: hashlib.sha256(s.encode()).hexdigest()))

        self.command = remote.Command(
            f"{name}-apply",
            connection=conn,
            create=apply_command(spec),
            stdin=stdin,
            triggers=triggers,
            # stdout is a JSON summary without secrets; with late values we still log nothing.
            logging=remote.Logging.NONE if spec.late_values else remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.copy]),
        )
        self.digest = content
        self.summary = self.command.stdout
        self.register_outputs({"digest": content, "summary": self.command.stdout})


def chain(
    name: str,
    specs: Sequence[StepSpec],
    tunnel: Tunnel,
    values: Mapping[str, pulumi.Input[str]],
    *,
    after: Sequence[pulumi.Resource],
    parent: pulumi.Resource,
) -> list[RemoteStep]:
    """RemoteSteps for `specs` in order, each after the one before (the first after `after`),
    each given the late values it declares from `values`."""
    steps: list[RemoteStep] = []
    previous: Sequence[pulumi.Resource] = tuple(after)
    for spec in specs:
        missing = set(spec.late_values) - set(values)
        if missing:
            raise ValueError(f"step {spec.name} needs late values nobody provides: {sorted(missing)}")
        step = RemoteStep(
            f"{name}-{spec.name}",
            RemoteStepArgs(spec, tunnel, late={k: values[k] for k in spec.late_values}, after=previous),
            pulumi.ResourceOptions(parent=parent),
        )
        steps.append(step)
        previous = (step,)
    return steps
