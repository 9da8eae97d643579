"""The mail list (`stacks/<stack>/mail_list.yml`): the single source of domains, mailboxes and aliases.

Seed format::

    defaults: {quota: 2G}            # optional
    domains:
      - name: example.org
        users:
          - alice                    # shorthand for {name: alice}
          - {name: bob, display_name: Bob Builder, quota: 5G}
          - name: news               # a newsletter login: its own sending limits (settings/limits.py)
            limits: {messages: {count: 2000, per: 1h, burst: 500}, recipients: {count: 2000, per: 1h, burst: 500}}
        limits:                      # the domain's own, all its logins together (optional)
          messages: {count: 3000, per: 1h, burst: 1000}
        aliases:
          - {name: postmaster, to: [alice]}             # local part, or a full address
          - {name: sales, to: [bob, partner@example.net]}
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from settings.limits import LimitsOverride
from settings.names import DomainName

# Lowercase dot-atom without '+', which is the recipient delimiter (alice+tag@...).
_LOCAL_PART = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")


def check_local_part(value: str) -> str:
    if not _LOCAL_PART.match(value) or ".." in value:
        raise ValueError(
            "not a valid local part: 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit ('+' is the tag delimiter)"
        )
    return value


LocalPart = Annotated[str, AfterValidator(check_local_part)]

_QUOTA_RE = re.compile(r"^(\d+)\s*([KMGT]?)i?B?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_quota(value: Any) -> int:
    """'2G' -> bytes; 0 means unlimited. Integers are bytes."""
    if isinstance(value, bool):
        raise ValueError("quota must be a size such as 2G, 500M or 0 for unlimited")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("quota cannot be negative")
        return value
    match = _QUOTA_RE.match(str(value).strip())
    if not match:
        raise ValueError("quota must be a size such as 2G, 500M or 0 for unlimited")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class User(_Strict):
    name: LocalPart
    display_name: str | None = None
    quota: int | None = Field(default=None, description="bytes; None = the list's default")
    limits: LimitsOverride | None = Field(
        default=None, description="this login's sending limits, in place of sams:limits.login (docs/limits.md)"
    )

    @field_validator("quota", mode="before")
    @classmethod
    def _quota(cls, value: Any) -> int | None:
        return None if value is None else parse_quota(value)


class Alias(_Strict):
    name: LocalPart
    to: list[str] = Field(min_length=1)


class Domain(_Strict):
    name: DomainName
    users: list[User] = Field(default_factory=list)
    aliases: list[Alias] = Field(default_factory=list)
    limits: LimitsOverride | None = Field(
        default=None,
        description="the domain's sending limits as a sender domain, in place of sams:limits.domain (docs/limits.md)",
    )

    @field_validator("users", "aliases", mode="before")
    @classmethod
    def _empty_key(cls, value: Any) -> Any:
        # `users:` or `aliases:` with nothing under it (a domain's last entry removed) is YAML's null.
        return [] if value is None else value

    @field_validator("users", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value


class Defaults(_Strict):
    quota: int = 2 * 1024**3

    @field_validator("quota", mode="before")
    @classmethod
    def _quota(cls, value: Any) -> int:
        return parse_quota(value)


class MailList(_Strict):
    defaults: Defaults = Field(default_factory=Defaults)
    domains: list[Domain] = Field(min_length=1)
    # Cross-entry checks (duplicates, alias targets) live in settings.checks so that each
    # problem can name its own key path and line.

    def quota_of(self, user: User) -> int:
        return self.defaults.quota if user.quota is None else user.quota

    @property
    def mailboxes(self) -> list[tuple[Domain, User]]:
        return [(d, u) for d in self.domains for u in d.users]
