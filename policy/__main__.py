"""The SAMS policy pack, run by the Pulumi CLI: `pulumi preview --policy-pack policy`.

Only the wiring lives here; the rules are plain functions in policy/rules.py, which the tests run
over the resources of a mocks run (constructing a PolicyPack starts a gRPC server and blocks).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The pack runs from policy/; the rules share NEVER_PUBLIC and the settings' defaults with the program.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policy import rules

CONFIG_SCHEMA = PolicyConfigSchema(
    properties={
        "prodStacks": {"type": "array", "items": {"type": "string"}, "default": list(rules.DEFAULT_PROD_STACKS)},
        "vpnNetworks": {"type": "array", "items": {"type": "string"}, "default": list(rules.DEFAULT_VPN_NETWORKS)},
    }
)


def _context(urn: str, config: Mapping[str, Any]) -> rules.Context:
    return rules.Context.of(rules.stack_of_urn(urn), config)


def _resource_policy(rule: rules.ResourceRule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        ctx = _context(args.urn, args.get_config())
        for message in rule.check(args.resource_type, args.props, ctx):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=rule.name, description=rule.description, validate=validate, config_schema=CONFIG_SCHEMA
    )


def _stack_policy(rule: rules.StackRule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [
            rules.Resource(r.resource_type, r.urn, r.props, r.parent.urn if r.parent else None) for r in args.resources
        ]
        if not resources:
            return
        ctx = _context(resources[0].urn, args.get_config())
        for message, urn in rule.check(resources, ctx):
            report_violation(message, urn)

    return StackValidationPolicy(
        name=rule.name, description=rule.description, validate=validate, config_schema=CONFIG_SCHEMA
    )


PolicyPack(
    name="sams",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[*map(_resource_policy, rules.RESOURCE_RULES), *map(_stack_policy, rules.STACK_RULES)],
)
