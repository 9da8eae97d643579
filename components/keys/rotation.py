"""DKIM key rotation with two selectors, as a pure function of the settings and the time.

    dkim_phase(settings.config.dkim, now) -> DkimPhase(published selectors, signing selector)

A rotation is written down once, in the stack file, and never edited while it runs:

    sams:dkim:
      selector: s1
      rotation: {to: s2, started: "2026-05-04T09:00:00Z", switchAfter: 48h, withdrawAfter: 7d}

and every later `pulumi up` (a push, the deploy workflow run by hand, or a scheduled run) lands in
the phase that the clock says:

    phase       when (t = now - started)          published   signing
    steady      no rotation                       s1          s1
    scheduled   t < 0                             s1          s1
    publishing  0 <= t < switchAfter              s1, s2      s1      the s2 key is made and published
    switched    switchAfter <= t < withdrawAfter  s1, s2      s2      s1 stays for mail signed before
    withdrawn   withdrawAfter <= t                s2          s2      the s1 key and record are removed

Then the user writes `selector: s2` and drops `rotation` (phase steady, same resources: nothing
changes, see below).

Why a dated setting and not a state machine or a command. A Pulumi program should give the same
resources for the same inputs; the alternatives either hide the inputs (a phase read back from
the stack's own state or the host) or make the user edit the stack three times at the right
moments. Here the inputs are the stack file and one explicit instant: the whole schedule is
readable in review, the loader validates it (settings/checks.py), `pulumi preview` shows what the
next run does, the `dkimRotation` stack output says which phase is live and when the next one
starts, and `SAMS_NOW=<instant> pulumi preview` shows any future phase. The only non-pure step is
reading the clock, done once per run by `now()` so keys, DNS and OpenDKIM all see the same phase.

What the function cannot know is when a run actually happened: the phases assume one `pulumi up`
near `started` (so the new record is out for `switchAfter` before anything is signed with it) and
one after each boundary. A first run long after `started` publishes and switches in the same
update; the runbook (docs/runbooks/dkim_rotation.md) says to set `started` to the moment of the
run that begins the rotation, or later, and never to a past day.

Resource names. Each key is `keys-dkim-<domain>-<selector>` and each record
`txt-<selector>._domainkey.<domain>`, whatever the phase: the s2 key made in `publishing` keeps
its URN through `switched`, `withdrawn` and the final `selector: s2` (no replacement, no new key),
and withdrawing s1 deletes exactly the s1 key and record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from settings.stack import DkimSettings
from settings.times import parse_instant

Phase = Literal["steady", "scheduled", "publishing", "switched", "withdrawn"]

# Overrides the clock for one run: `SAMS_NOW=2026-05-06T09:00:00Z pulumi preview` shows that day's phase.
NOW_ENV = "SAMS_NOW"


@dataclass(frozen=True)
class DkimPhase:
    phase: Phase
    published: tuple[str, ...]  # selectors whose key exists and whose TXT record is published
    signing: str  # the selector OpenDKIM signs with; always one of `published`
    next_change: datetime | None = None  # when the next phase starts (None: nothing scheduled)

    def __post_init__(self) -> None:
        if self.signing not in self.published or len(set(self.published)) != len(self.published):
            raise ValueError(f"inconsistent DKIM phase: signing {self.signing}, published {self.published}")

    def summary(self) -> dict[str, object]:
        """The `dkimRotation` stack output."""
        return {
            "phase": self.phase,
            "published": list(self.published),
            "signing": self.signing,
            "nextChange": self.next_change.isoformat() if self.next_change else None,
        }


def steady(selector: str) -> DkimPhase:
    return DkimPhase("steady", (selector,), selector)


def dkim_phase(dkim: DkimSettings, now: datetime) -> DkimPhase:
    """Which selectors are published and which one signs at `now` (timezone-aware)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    rot = dkim.rotation
    if rot is None:
        return steady(dkim.selector)
    old, new = dkim.selector, rot.to
    switch_at, withdraw_at = rot.started + rot.switch_after, rot.started + rot.withdraw_after
    if now < rot.started:
        return DkimPhase("scheduled", (old,), old, rot.started)
    if now < switch_at:
        return DkimPhase("publishing", (old, new), old, switch_at)
    if now < withdraw_at:
        return DkimPhase("switched", (old, new), new, withdraw_at)
    return DkimPhase("withdrawn", (new,), new)


def phase_without_clock(dkim: DkimSettings) -> DkimPhase:
    """For pure renderers called without a phase: only a stack with no rotation has one answer."""
    if dkim.rotation is not None:
        raise ValueError("sams:dkim.rotation is set: pass the phase from dkim_phase(settings, now)")
    return steady(dkim.selector)


def now(environ: Mapping[str, str] | None = None) -> datetime:
    """The run's one reading of the clock (UTC), or SAMS_NOW if set."""
    env = os.environ if environ is None else environ
    text = env.get(NOW_ENV)
    if not text:
        return datetime.now(UTC)
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise ValueError(f"{NOW_ENV}={text!r}: {exc}") from None
