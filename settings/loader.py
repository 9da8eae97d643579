"""One loader: Pulumi config (`sams:*`) + `stacks/<stack>/mail_list.yml` -> validated Settings.

Every problem becomes a SettingsError naming the file, line, key path and value, and the
program raises it before registering a single resource.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from settings.checks import (
    Finding,
    check_certificate_names,
    check_hostname_zone,
    check_mail_list,
    check_outbound_limits,
    check_stack,
    split_user_addresses,
)
from settings.errors import MISSING, Problem, SettingsError, format_path
from settings.mail_list import MailList
from settings.stack import StackConfig
from settings.yamlpos import Located, load_located

NAMESPACE = "sams"

# Secret config keys: read by the Pulumi shell with get_secret(), never part of Settings.
SECRET_KEYS = frozenset(
    {
        "sshPrivateKey",
        "relayPassword",
        "vaultToken",
        "acmeCloudflareToken",
        # The restic repository's password (generated when unset) and its storage credential.
        "backupPassword",
        "backupKeyId",
        "backupKeySecret",
        # The second copy's credential (sams:backup.copyTo).
        "backupCopyKeyId",
        "backupCopyKeySecret",
        # The Slack-compatible webhook Alertmanager posts to (sams:monitoring).
        "monitoringWebhookUrl",
        # The dead man's switch Alertmanager pings while the host's monitoring lives.
        "monitoringHeartbeatUrl",
    }
)


@dataclass(frozen=True)
class Settings:
    stack: str
    config: StackConfig
    mail: MailList
    config_file: str
    mail_list_file: str


class _Source:
    """A file's data and line map, for turning a key path into a Problem."""

    def __init__(self, filename: str, located: Located):
        self.filename, self.located = filename, located

    def problem(self, path: tuple[Any, ...], value: Any, message: str) -> Problem:
        return Problem(self.filename, self.located.line_of(path), format_path(path), value, message)

    def from_validation(self, exc: ValidationError) -> list[Problem]:
        out = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            value = err.get("input", MISSING) if err["type"] != "missing" else MISSING
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling; keys are listed in docs/settings.md)"
            out.append(self.problem(loc, value, msg))
        return out

    def findings(self, found: Iterable[Finding]) -> list[Problem]:
        return [self.problem(path, value, msg) for path, value, msg in found]


def _decode(value: Any) -> Any:
    """Pulumi hands structured config over as JSON text and scalars as strings."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def stack_config_data(raw_config: Mapping[str, Any]) -> dict[str, Any]:
    """{'sams:provider': 'vultr', 'cloudflare:apiToken': ...} -> {'provider': 'vultr'}."""
    prefix = NAMESPACE + ":"
    return {
        k[len(prefix) :]: _decode(v)
        for k, v in raw_config.items()
        if k.startswith(prefix) and k[len(prefix) :] not in SECRET_KEYS
    }


def _validate(model: type[BaseModel], data: Any, source: _Source) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(source.from_validation(exc)) from None


def load(stack: str, raw_config: Mapping[str, Any], project_dir: FsPath, *, secrets_required: bool = True) -> Settings:
    """Validate the stack's config and mail list; raise SettingsError listing every problem.

    `secrets_required=False` (the tools' reader, settings/stackfile.py) skips only the checks that a
    secret the stack needs is set: the tools never read one from the stack file."""
    config_file = f"Pulumi.{stack}.yaml"
    stack_file = project_dir / config_file
    located_cfg = load_located(stack_file.read_text(), config_file) if stack_file.exists() else Located({})
    # Key paths in the stack file are config -> 'sams:key' -> nested keys.
    cfg_source = _ConfigSource(config_file, located_cfg)
    data = stack_config_data(raw_config)
    cfg: StackConfig = _validate(StackConfig, data, cfg_source)
    problems = cfg_source.findings(check_stack(cfg))
    if secrets_required:
        problems += list(_missing_secrets(cfg, raw_config, cfg_source))

    mail_rel = cfg.mail_list or f"stacks/{stack}/mail_list.yml"
    mail_path = project_dir / mail_rel
    if not mail_path.exists():
        raise SettingsError(
            problems + [cfg_source.problem(("mailList",), mail_rel, f"mail list file {mail_rel} does not exist")]
        )
    located_mail = load_located(mail_path.read_text(), mail_rel)
    mail_source = _Source(mail_rel, located_mail)
    problems += mail_source.findings(split_user_addresses(located_mail.data))
    if problems:
        raise SettingsError(problems)
    mail: MailList = _validate(MailList, located_mail.data, mail_source)
    problems += mail_source.findings(check_mail_list(mail))
    problems += cfg_source.findings(check_hostname_zone(cfg, mail))
    problems += cfg_source.findings(check_certificate_names(cfg, mail))
    problems += cfg_source.findings(check_outbound_limits(cfg, mail))
    if problems:
        raise SettingsError(problems)
    return Settings(stack, cfg, mail, config_file, mail_rel)


class _ConfigSource(_Source):
    """Names config keys the way `pulumi config` does: sams:wireguard.hubPublicKey."""

    def problem(self, path: tuple[Any, ...], value: Any, message: str) -> Problem:
        if not path:
            return Problem(self.filename, self.located.line_of(("config",)), f"{NAMESPACE}:*", value, message)
        head, rest = path[0], tuple(path[1:])
        key = f"{NAMESPACE}:{head}"
        line = self.located.line_of(("config", key) + rest)
        tail = format_path(rest) if rest else ""
        shown = key + ("." + tail if rest and isinstance(rest[0], str) else tail)
        return Problem(self.filename, line, shown, value, message)


def from_pulumi(project_dir: FsPath) -> Settings:
    """Read the running stack's config through the Pulumi runtime."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    # The runtime keeps the whole config map here; enumerating it is the only way to spot
    # unknown `sams:` keys (pulumi.Config only answers for keys it is asked about).
    raw: dict[str, Any] = dict(runtime_config.get_config_env())
    raw.update(runtime_config.CONFIG.get())
    return load(pulumi.get_stack(), raw, project_dir)


def _missing_secrets(cfg: StackConfig, raw_config: Mapping[str, Any], cfg_source: _ConfigSource) -> Iterable[Problem]:
    """The secrets this stack's settings need that `pulumi config set --secret` has not set."""
    if cfg.relay and cfg.relay.username and f"{NAMESPACE}:relayPassword" not in raw_config:
        yield (
            cfg_source.problem(
                ("relayPassword",),
                MISSING,
                "required when sams:relay.username is set: pulumi config set --secret sams:relayPassword ...",
            )
        )

    repository = cfg.backup.repository if cfg.backup.enabled else None
    if repository and repository.startswith("s3:"):
        for key in ("backupKeyId", "backupKeySecret"):
            if f"{NAMESPACE}:{key}" not in raw_config:
                yield (
                    cfg_source.problem(
                        (key,),
                        MISSING,
                        f"required by the s3 repository in sams:backup.repository (its access key): "
                        f"pulumi config set --secret sams:{key} ...",
                    )
                )

    if cfg.acme.challenge == "dns-01-cloudflare" and f"{NAMESPACE}:acmeCloudflareToken" not in raw_config:
        yield (
            cfg_source.problem(
                ("acmeCloudflareToken",),
                MISSING,
                "required by acme.challenge dns-01-cloudflare: pulumi config set --secret sams:acmeCloudflareToken ...",
            )
        )
