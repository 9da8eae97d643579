"""Sending limits as Rspamd ratelimit rules, and the outbound pacing transport for Postfix (pure).

Rspamd's ratelimit module (already in the milter every submission passes through, with the Redis
it already uses) keeps one leaky bucket per login and per sender domain, for messages and for
recipients. Postfix's own tools were the alternative: anvil counts per client address only (a
phone and a laptop behind one NAT share it, a login roaming between networks escapes it), and
policyd-rate-limit or postfwd would be one more daemon. Rspamd counts by the SASL login, which is
what a stolen password is.

Each bucket's Redis key is its counter and the login (or domain), never the limit's numbers: a
user whose limit is raised in the mail list keeps the bucket already filled, with more room in it.
Only mail with a SASL login is counted (Rspamd's `user` is empty on port 25 and for local mail),
so inbound mail never meets these limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from settings import Settings
from settings.limits import LimitsOverride, Rate
from settings.times import format_duration

# Added (0 points) to every message a limit refused, with the rule's name: the task's log line
# then names the login (`user:`) and the limit, and Rspamd counts the symbol (/counters).
RATELIMIT_SYMBOL = "SAMS_RATELIMIT"
# An empty map for whitelisted_rcpts (see etc/rspamd/local.d/ratelimit.conf.j2).
EXEMPT_RCPTS_MAP = "/etc/rspamd/local.d/sams-ratelimit-exempt-rcpts.map"
# A bucket no longer touched is dropped from Redis once it has drained; never sooner than this.
MIN_EXPIRE_S = 60

# Postfix's transport for the outbound pacing (sams:limits.outbound): a copy of smtp whose
# deliveries to one destination Postfix spaces by <transport>_destination_rate_delay.
WARMUP_TRANSPORT = "warmup"
WARMUP_TRANSPORT_MAP = "/etc/postfix/warmup_transport"

SCOPES = ("login", "domain")
COUNTERS = ("messages", "recipients")


@dataclass(frozen=True)
class Rule:
    """One ratelimit rate: which bucket (selector), its size and leak, and the 4xx text."""

    name: str
    selector: str
    rate: Rate
    counts_recipients: bool
    message: str

    @property
    def rate_text(self) -> str:
        """Rspamd's form: '100 / 3600s' (count per window)."""
        return f"{self.rate.count} / {int(self.rate.per.total_seconds())}s"


def _list(values: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _selector(scope: str, counter: str) -> str:
    """The bucket's key: the counter's name, then the login (lowercased: a client may log in as
    Alice@...), or the envelope sender's domain of an authenticated message (`user.id` yields ''
    and only keeps authenticated mail: without a login the whole selector is empty)."""
    head = f"id('{scope}_{counter}');"
    return head + ("user.lower" if scope == "login" else "user.id;from('smtp'):domain.lower")


def _message(scope: str, counter: str, rate: Rate, who: str) -> str:
    return f"Sending limit reached for {who}: {rate.describe(counter)}. This message was not sent; try again later"


def rules(settings: Settings) -> list[Rule]:
    """Every rate: per scope and counter, the stack's limit for all but the overridden logins or
    domains, and one rule for each override."""
    limits = settings.config.limits
    overrides: dict[str, dict[str, LimitsOverride]] = {
        "login": {f"{u.name}@{d.name}": u.limits for d, u in settings.mail.mailboxes if u.limits},
        "domain": {d.name: d.limits for d in settings.mail.domains if d.limits},
    }
    out = []
    for scope in SCOPES:
        general = limits.login if scope == "login" else limits.domain
        for counter in COUNTERS:
            base = _selector(scope, counter)
            own = {key: getattr(o, counter) for key, o in overrides[scope].items() if getattr(o, counter) is not None}
            everyone = "this login" if scope == "login" else "this sender domain"
            rate: Rate = getattr(general, counter)
            out.append(
                Rule(
                    f"{scope}_{counter}",
                    base + (f".not_in({_list(sorted(own))})" if own else ""),
                    rate,
                    counter == "recipients",
                    _message(scope, counter, rate, everyone),
                )
            )
            for key, rate in sorted(own.items()):
                out.append(
                    Rule(
                        f"{scope}_{counter}:{key}",
                        base + f".in({_list([key])})",
                        rate,
                        counter == "recipients",
                        _message(scope, counter, rate, key),
                    )
                )
    return out


def expire_seconds(found: list[Rule]) -> int:
    """How long Redis keeps an untouched bucket: until the slowest one has drained."""
    return max([MIN_EXPIRE_S, *(r.rate.drain_seconds for r in found)])


def ratelimit_context(settings: Settings) -> dict[str, object]:
    """The template context of etc/rspamd/local.d/ratelimit.conf.j2."""
    found = rules(settings)
    return {
        "enabled": settings.config.limits.enabled,
        "rules": found,
        "symbol": RATELIMIT_SYMBOL,
        "exempt_map": EXEMPT_RCPTS_MAP,
        "expire": expire_seconds(found),
    }


def warmup_context(settings: Settings) -> dict[str, object]:
    """main.cf's and master.cf's outbound pacing: the transport, its map and its delay (None: off)."""
    outbound = settings.config.limits.outbound
    if not outbound.domains:
        return {"warmup": None}
    return {
        "warmup": {
            "transport": WARMUP_TRANSPORT,
            "map": WARMUP_TRANSPORT_MAP,
            "delay": f"{int(outbound.delay.total_seconds())}s",
            "delay_text": format_duration(outbound.delay),
        }
    }


def warmup_transport_map(settings: Settings) -> str:
    """The texthash transport table: each listed recipient domain to the pacing transport (an empty
    nexthop: the recipient domain's MX hosts, as for any other mail)."""
    lines = [
        "# Managed by SAMS (sams:limits.outbound): deliveries to these domains go one at a time,",
        f"# {format_duration(settings.config.limits.outbound.delay)} apart, through the {WARMUP_TRANSPORT} transport.",
    ]
    lines += [f"{domain} {WARMUP_TRANSPORT}:" for domain in settings.config.limits.outbound.domains]
    return "\n".join(lines) + "\n"
