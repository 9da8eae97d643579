"""The first remote step: wait until cloud-init has finished the bootstrap on the host."""

from __future__ import annotations

from components.remote.steps import StepSpec

# `cloud-init status --wait` exits non-zero if any bootstrap module failed: the apply stops here.
READY = StepSpec(
    name="host-ready",
    script="cloud-init status --wait >/dev/null\n",
    description="wait for cloud-init's first boot to finish",
)
