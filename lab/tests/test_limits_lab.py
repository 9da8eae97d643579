"""Sending limits on the lab host (issue 26): what a login that submits too much sees, and who else does not.

Rspamd's ratelimit (components/mail/limits.py) keeps one bucket per login and per sender domain in the
host's Redis. A stolen password that floods submission is refused with 451 4.7.1 once its burst is spent,
nothing before; other logins and mail from the internet (port 25) carry on; the bucket drains over the
window; a user's own limit in the mail list lifts theirs. The small limits and short windows here come
from `up_with` overrides, as an admin would set them in the stack file; the flood uses the defaults.

    python -m pytest -p no:cacheprovider -x lab/tests/test_limits_lab.py      # boots the lab; root
"""

from __future__ import annotations

import itertools
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.mail import limits
from lab import receiver
from lab.dns import RECEIVER_DOMAIN, SENDER_DOMAIN
from lab.hostcmd import WAIT_RSPAMD, sh
from lab.netclient import message, mx_attempt, tls_context
from lab.session import Lab, up_with
from lab.tests import journal
from lab.tests.test_deliverability_lab import received
from lab.world import World, subject, world
from settings.limits import LoginLimits

pytestmark = pytest.mark.lab

WINDOW_S = 30
# alice and bob: 3 messages at once, then 3 per 30 s; 5 recipients at once, then 5 per 30 s.
SMALL = {
    "login": {
        "messages": {"count": 3, "per": f"{WINDOW_S}s", "burst": 3},
        "recipients": {"count": 5, "per": f"{WINDOW_S}s", "burst": 5},
    }
}
RSPAMD_LOG = "/var/log/rspamd/rspamd.log"
Reply = tuple[int, str]


def submit_many(
    host: str, cafile: str, login: tuple[str, str], to: list[str], tags: list[str], port: int = 587
) -> list[Reply]:
    """One logged-in session submitting one message per tag, as a spam tool would: the reply to each
    message's end of DATA (or to the first refused RCPT), RSET between messages. Submission ends a
    session at its 5th error (smtpd_hard_error_limit): the reply that ended it is the last one."""
    ctx = tls_context(cafile)
    client = (
        smtplib.SMTP_SSL(host, port, context=ctx, timeout=30, local_hostname="laptop.example")
        if port == 465
        else smtplib.SMTP(host, port, timeout=30, local_hostname="laptop.example")
    )
    replies: list[Reply] = []
    with client:
        if port != 465:
            client.starttls(context=ctx)
        client.login(*login)
        for tag in tags:
            code, text = client.rset()
            if code == 421:  # the server ended the session
                replies.append((code, text.decode(errors="replace")))
                break
            code, text = client.mail(login[0])
            for rcpt in to:
                if code < 400:
                    code, text = client.rcpt(rcpt)
            if code < 400:
                code, text = client.data(message(login[0], ", ".join(to), tag))
            replies.append((code, text.decode(errors="replace")))
    return replies


def reset_buckets(lab: Lab) -> None:
    """Every ratelimit bucket gone (their keys start with Rspamd's prefix RL): each test starts empty,
    whatever earlier modules sent."""
    sh(lab, "redis-cli --scan --pattern 'RL*' | xargs -r redis-cli del >/dev/null")


def codes(replies: list[Reply]) -> list[int]:
    return [code for code, _ in replies]


def log_mark(lab: Lab) -> int:
    """How many lines Rspamd's log has now."""
    return int(sh(lab, f"wc -l < {RSPAMD_LOG}").strip())


def limit_hits(lab: Lab, mark: int) -> list[str]:
    """The log lines of messages a limit refused since `mark`: Rspamd's one line per message (at the
    "notice" level of local.d/logging.inc) with the action and SAMS_RATELIMIT, which names the rule.
    This is the count a monitoring exporter reads."""
    lines = sh(lab, f"tail -n +{mark + 1} {RSPAMD_LOG}").splitlines()
    return [line for line in lines if f"{limits.RATELIMIT_SYMBOL}(" in line]


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        with world(lab, tmp_path_factory.mktemp("limits")) as w:
            yield w
    finally:
        up_with(lab, {})  # the stack's own limits, no pacing
        sh(lab, WAIT_RSPAMD)
        reset_buckets(lab)


def limited(lab: Lab, overrides: dict[str, Any] | None = None) -> None:
    """`pulumi up` with these limits (and other overrides), Rspamd reloaded with them, buckets empty."""
    up_with(lab, {"sams:limits": SMALL, **(overrides or {})})
    sh(lab, WAIT_RSPAMD)
    reset_buckets(lab)


def test_the_defaults_stop_a_flood_after_100_messages(lab: Lab, mail: World) -> None:
    """A stolen password submitting as fast as the host takes (one session, message after message):
    the default login limit (100 at once, then 100 an hour) takes the first 100 and refuses the rest
    with a temporary 451 4.7.1, saying why, until the 5th refusal ends the session. Before the limits
    the host took every one."""
    default = LoginLimits().messages
    up_with(lab, {})
    sh(lab, WAIT_RSPAMD)
    reset_buckets(lab)
    tag = subject("flood")
    start = time.monotonic()
    replies = mail.inet(
        submit_many, mail.host, mail.cafile, mail.login("alice@sams.test"), ["bob@sams.test"],
        [f"{tag}-{i}" for i in range(default.burst + 10)], timeout=600,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    accepted = codes(replies).count(250)
    # The bucket drains while the flood runs: that many more may pass.
    leaked = int(elapsed * default.count / default.per.total_seconds()) + 1
    assert codes(replies)[: default.burst] == [250] * default.burst, replies[: default.burst]
    assert default.burst <= accepted <= default.burst + leaked, (accepted, elapsed, codes(replies))
    refused = [r for r in replies if r[0] != 250]
    # Refused with 451, and after 5 refusals the session is cut (submission's smtpd_hard_error_limit).
    assert [code for code, _ in refused] == [451] * 5 + [421], refused
    assert "too many errors" in refused[-1][1], refused
    assert refused[0][1].startswith(f"4.7.1 Sending limit reached for this login: {default.burst} messages at once")


def test_over_the_limit_4xx_after_the_limit_not_before(mail: World) -> None:
    """alice's 4th message in a row is refused (451 4.7.1, the limit in the text), nothing before it;
    the refused ones are neither delivered nor queued to bounce; the hit is logged with her login and
    counted. bob, another login, and mail from the internet on port 25 are not held back meanwhile."""
    lab = mail.lab
    limited(lab)
    mark, cursor = log_mark(lab), journal.cursor(lab.shell)
    tag = subject("limit")
    tags = [f"{tag}-{i}" for i in range(6)]
    replies = mail.inet(submit_many, mail.host, mail.cafile, mail.login("alice@sams.test"), ["bob@sams.test"], tags)
    assert codes(replies) == [250, 250, 250, 451, 451, 451], replies
    text = replies[3][1]
    assert text == (
        "4.7.1 Sending limit reached for this login: 3 messages at once, then 3 per 30s. "
        "This message was not sent; try again later"
    ), text
    assert len(mail.read("bob@sams.test", tag, want=3)) == 3
    assert mail.read("bob@sams.test", tags[3], want=1, wait=2) == []  # refused means not delivered
    assert sh(lab, "postqueue -j").strip() == ""  # nor waiting to be sent or bounced
    postfix = journal.since(lab.shell, cursor, "postfix", "postfix@-")
    assert "non-delivery notification" not in postfix, postfix[-2000:]
    assert len(re.findall(r"milter-reject: END-OF-MESSAGE .*: 4\.7\.1 Sending limit reached", postfix)) == 3

    # Each hit: one Rspamd log line naming the login, the action and the rule.
    time.sleep(1)  # written as each task ends, which may follow its reply
    hits = limit_hits(lab, mark)
    assert len(hits) == 3, hits
    for line in hits:
        assert "user: alice@sams.test," in line and "(soft reject)" in line and "{login_messages(" in line, line

    # bob, the same domain, another login: his own bucket.
    bob = mail.inet(submit_many, mail.host, mail.cafile, mail.login("bob@sams.test"), ["alice@sams.test"],
                    [f"{tag}-bob-{i}" for i in range(3)])  # fmt: skip
    assert codes(bob) == [250, 250, 250], bob
    # The internet, port 25, to alice: no login, no limit (5 messages, more than the burst).
    sender = f"someone@{SENDER_DOMAIN}"
    for i in range(5):
        inbound = f"{tag}-in-{i}"
        reply = mail.inet(mx_attempt, mail.host, sender, "alice@sams.test", message(sender, "alice@sams.test", inbound))
        assert reply[0] == 250, (i, reply)
    assert len(mail.read("alice@sams.test", f"{tag}-in-", want=5)) == 5


def test_after_the_window_the_login_sends_again(mail: World) -> None:
    """The bucket drains 3 per 30 s: once a window has passed after alice's burst, a new burst goes."""
    lab = mail.lab
    limited(lab)
    tag = subject("window")
    login = mail.login("alice@sams.test")
    first = mail.inet(submit_many, mail.host, mail.cafile, login, ["bob@sams.test"], [f"{tag}-a{i}" for i in range(4)])
    assert codes(first) == [250, 250, 250, 451], first
    time.sleep(WINDOW_S + 2)
    again = mail.inet(submit_many, mail.host, mail.cafile, login, ["bob@sams.test"], [f"{tag}-b{i}" for i in range(4)])
    assert codes(again) == [250, 250, 250, 451], again
    assert len(mail.read("bob@sams.test", tag, want=6)) == 6


def test_recipients_count_each_one(mail: World) -> None:
    """carol's limit is 5 recipients at once: a message to 3 goes, a second one to 3 (6 in all) is
    refused for its recipients although it is only her second message."""
    limited(mail.lab)
    tag = subject("rcpts")
    to = ["alice@sams.test", "bob@sams.test", "carol@other.test"]
    replies = mail.inet(
        submit_many, mail.host, mail.cafile, mail.login("carol@other.test"), to, [f"{tag}-1", f"{tag}-2"]
    )
    assert codes(replies) == [250, 451], replies
    assert "5 recipients at once, then 5 per 30s" in replies[1][1], replies


def test_a_users_own_limit_in_the_mail_list_lifts_theirs(mail: World, tmp_path: Path) -> None:
    """alice gets her own messages limit in the mail list (50 at once): 5 in a row go, where the stack's
    3 stopped her, and the 6th meets the recipients limit she did not override (5); bob, without a
    limit of his own, is still stopped at his 4th message."""
    lab = mail.lab
    mail_list = tmp_path / "mail_list.yml"
    stock = (Path(__file__).resolve().parents[2] / "stacks" / "lab" / "mail_list.yml").read_text()
    own = "      - name: alice\n        limits:\n          messages: {count: 50, per: 30s, burst: 50}\n"
    mail_list.write_text(stock.replace("      - alice\n", own, 1))
    limited(lab, {"sams:mailList": str(mail_list)})
    conf = sh(lab, "rspamadm configdump ratelimit")
    assert "login_messages:alice@sams.test" in conf and ".not_in('alice@sams.test')" in conf, conf
    tag = subject("override")
    alice = mail.inet(submit_many, mail.host, mail.cafile, mail.login("alice@sams.test"), ["bob@sams.test"],
                      [f"{tag}-a{i}" for i in range(6)])  # fmt: skip
    assert codes(alice) == [250] * 5 + [451], alice
    assert "this login: 5 recipients at once" in alice[5][1], alice
    bob = mail.inet(submit_many, mail.host, mail.cafile, mail.login("bob@sams.test"), ["alice@sams.test"],
                    [f"{tag}-b{i}" for i in range(4)])  # fmt: skip
    assert codes(bob) == [250, 250, 250, 451], bob


def test_the_host_runs_the_rendered_rules(mail: World) -> None:
    """The rules in force are the renderer's, Rspamd dropped none of them (it only logs a rule it
    cannot parse), and the limits' map is in place."""
    lab = mail.lab
    limited(lab)
    conf = sh(lab, "rspamadm configdump ratelimit")
    for name in ("login_messages", "login_recipients", "domain_messages", "domain_recipients"):
        assert re.search(rf"^    {name} \{{$", conf, re.M), conf
    assert 'rate = "3 / 30s";' in conf and 'info_symbol = "SAMS_RATELIMIT";' in conf
    check = lab.shell.run(["sudo", "-n", "rspamadm", "configtest"], check=False)
    assert check.returncode == 0 and "bad ratelimit" not in check.stderr.decode(), check.stderr.decode()
    assert sh(lab, f"cat {limits.EXEMPT_RCPTS_MAP}").startswith("# Managed by SAMS")


def delivered_at(lab: Lab, tags: list[str], wait: float = 120) -> list[float]:
    """When the receiver took each tagged message (its spool file names begin with the time)."""
    for tag in tags:
        received(lab, tag, wait)

    out = []
    for tag in tags:
        (path,) = [p for p in (receiver.spool(lab.paths) / "new").glob("*.eml") if tag.encode() in p.read_bytes()]
        out.append(float(path.name.split("-", 1)[0]))
    return sorted(out)


def test_outbound_pacing_spaces_deliveries_to_a_listed_domain(mail: World) -> None:
    """sams:limits.outbound lists receiver.example: three messages submitted at once leave through the
    warmup transport one at a time, the delay apart. Turned off again, its transport and table go."""
    lab = mail.lab
    delay = 4
    up_with(lab, {"sams:limits": {"outbound": {"domains": [RECEIVER_DOMAIN], "delay": f"{delay}s"}}})
    sh(lab, WAIT_RSPAMD)
    reset_buckets(lab)
    tag = subject("paced")
    tags = [f"{tag}-{i}" for i in range(3)]
    mark = journal.cursor(lab.shell)
    replies = mail.inet(submit_many, mail.host, mail.cafile, mail.login("alice@sams.test"),
                        [f"someone@{RECEIVER_DOMAIN}"], tags)  # fmt: skip
    assert codes(replies) == [250, 250, 250], replies
    times = delivered_at(lab, tags)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= delay - 0.5 for gap in gaps), gaps
    log = journal.since(lab.shell, mark, tag=f"postfix/{limits.WARMUP_TRANSPORT}/smtp")
    assert len(re.findall(rf"to=<someone@{RECEIVER_DOMAIN}>.*status=sent", log)) == 3, log

    up_with(lab, {})
    assert "transport_maps" not in sh(lab, "postconf -n")
    assert sh(lab, f"test -e {limits.WARMUP_TRANSPORT_MAP} && echo left || echo gone").strip() == "gone"
    assert sh(lab, "postconf -M warmup/unix 2>/dev/null || true").strip() == ""
