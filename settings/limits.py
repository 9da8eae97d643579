"""Sending limits: how much a login and a sender domain may submit (`sams:limits`, and per user or
domain in the mail list), and the optional pacing of this host's own deliveries to large receivers.

A limit is a leaky bucket, as Rspamd's ratelimit module keeps it in Redis: up to `burst` at once,
then `count` per `per` as the bucket drains. Messages count one each; recipients count every
envelope recipient of a message. Over a limit the submission gets a 4xx (451 4.7.1) at the end of
DATA: nothing is accepted, so nothing bounces, and the client keeps the message to retry later.

The field names are single words, so the stack config (camelCase keys) and the mail list
(snake_case keys) share these models.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from settings.names import DomainName
from settings.times import Duration, format_duration


class _Model(BaseModel):
    # Aliases as in the stack config (settings/stack.py); every key here is one word, so they are
    # also the mail list's snake_case keys.
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False)


# Windows from a second (the unit Rspamd's rates are written in here) to a week.
MIN_WINDOW = timedelta(seconds=1)
MAX_WINDOW = timedelta(days=7)


class Rate(_Model):
    """Up to `burst` at once, then `count` per `per`."""

    count: int = Field(gt=0, description="how many per window, once the burst is spent")
    per: Duration = Field(description="the window (`30s`, `1h`, `1d`)")
    burst: int = Field(gt=0, description="how many may go at once (the bucket's size)")

    @field_validator("per")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        if not MIN_WINDOW <= value <= MAX_WINDOW:
            raise ValueError(
                f"the window must be between {format_duration(MIN_WINDOW)} and {format_duration(MAX_WINDOW)}"
            )
        return value

    @property
    def drain_seconds(self) -> int:
        """How long a full bucket takes to empty: after this, the sender's state is of no use."""
        return -(-self.burst * int(self.per.total_seconds()) // self.count)

    def describe(self, what: str) -> str:
        """'100 messages at once, then 100 per 1h'."""
        return f"{self.burst} {what} at once, then {self.count} per {format_duration(self.per)}"


class LimitsOverride(_Model):
    """A mail list entry's own limits; a counter left out keeps the stack's (`sams:limits`)."""

    messages: Rate | None = Field(default=None, description="replaces the stack's messages limit")
    recipients: Rate | None = Field(default=None, description="replaces the stack's recipients limit")


_HOUR = timedelta(hours=1)
MESSAGES = "messages, one each whatever their recipients"
RECIPIENTS = "envelope recipients, every one of each message"


class LoginLimits(_Model):
    """Per login. Ordinary people send a few dozen messages on a busy day; 100 at once and 100 an
    hour after that caps a stolen password at ~2,500 messages a day instead of the ~11 a second the
    host accepts."""

    messages: Rate = Field(default=Rate(count=100, per=_HOUR, burst=100), description=MESSAGES)
    recipients: Rate = Field(default=Rate(count=500, per=_HOUR, burst=500), description=RECIPIENTS)


class DomainLimits(_Model):
    """Per sender domain, all its logins together: ten busy users."""

    messages: Rate = Field(default=Rate(count=1000, per=_HOUR, burst=1000), description=MESSAGES)
    recipients: Rate = Field(default=Rate(count=5000, per=_HOUR, burst=5000), description=RECIPIENTS)


class OutboundLimits(_Model):
    """Pacing of this host's own deliveries to receivers that throttle new senders (IP warm-up)."""

    domains: list[DomainName] = Field(
        default_factory=list,
        description="recipient domains delivered to one message at a time, `delay` apart (empty: off)",
    )
    delay: Duration = Field(
        default=timedelta(seconds=10),
        description="the pause between two deliveries to one of `domains` (Postfix's destination_rate_delay)",
    )

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(hours=1):
            raise ValueError("the delay must be between 1s and 1h")
        return value


class LimitsSettings(_Model):
    """Sending limits on submission (587, 465): per login and per sender domain (docs/limits.md)."""

    enabled: bool = Field(default=True, description="limit what logins submit (Rspamd's ratelimit, in Redis)")
    login: LoginLimits = Field(default_factory=LoginLimits, description="per login (the SASL user name)")
    domain: DomainLimits = Field(
        default_factory=DomainLimits, description="per sender domain (the envelope sender's), all its logins together"
    )
    outbound: OutboundLimits = Field(
        default_factory=OutboundLimits, description="IP warm-up: deliveries to listed domains paced (off by default)"
    )
