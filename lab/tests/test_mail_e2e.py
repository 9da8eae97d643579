"""The mail system, end to end with real clients: what a user and a sending server see.

Clients run in the lab's namespaces: `sams-inet` is the internet (other MTAs, a user's phone),
`sams-admin` is the admin's laptop behind the WireGuard tunnel. The clients are lab/netclient.py
(SMTP, IMAP, POP3 from inside a namespace) and lab/dnsclient.py (DNS, DKIM); the users' known
passwords and the `World` they use are lab/world.py.
"""

from __future__ import annotations

import email.message
import email.utils
import re
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.mail import services
from components.remote.steps import File, StepSpec, stage
from lab import program
from lab.dns import RECEIVER_DOMAIN, SENDER_DOMAIN  # remote MTAs in sams-inet (SPF for the sender)
from lab.dnsclient import dns_silent, verify_dkim
from lab.hostcmd import PSQL, WAIT_OPENDKIM, WAIT_RSPAMD, run_step, sh
from lab.netclient import (
    banner,
    dialogue,
    imap_count,
    imap_login_from,
    imap_logins,
    imap_plaintext_login,
    message,
    mx_attempt,
    pop3_read,
    submit_attempt,
    tls_context,
)
from lab.session import Lab
from lab.spec import NAMES
from lab.tests import journal
from lab.world import DOMAIN, GTUBE, World, subject, world, write_hashes

pytestmark = pytest.mark.lab


# --- running a client inside a lab namespace ---------------------------------------------------


# --- clients (run in the child: plain values in and out) ------------------------------------------


# --- the internet's DNS ------------------------------------------------------------------------------
# The lab DNS (lab/dns.py: NSD in sams-inet) serves the zones the program publishes, reverse names, a
# remote sender's domain and the receiver's; the host resolves through it from its first boot.


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("mail")) as w:
        yield w


# --- submission and reading ----------------------------------------------------------------------


def test_submit_587_read_over_imaps_and_pop3s(mail: World) -> None:
    """alice submits on 587 (STARTTLS, AUTH); bob reads it over IMAPS and POP3S, certificate verified."""
    tag = subject("587")
    mail.submit(587, "alice@sams.test", ["bob@sams.test"], tag, body="over 587\n")
    imap = mail.read("bob@sams.test", tag)
    assert len(imap) == 1 and b"over 587" in imap[0]
    # The submission hop was TLS, recorded by Postfix (smtpd_tls_received_header).
    assert b"with ESMTPSA" in imap[0] and b"using TLSv1.3" in imap[0]
    pop = mail.inet(pop3_read, mail.host, mail.cafile, mail.login("bob@sams.test"), tag)
    assert len(pop) == 1 and b"over 587" in pop[0]


def test_submissions_465_implicit_tls(mail: World) -> None:
    tag = subject("465")
    mail.submit(465, "bob@sams.test", ["alice@sams.test"], tag, body="over 465\n")
    got = mail.read("alice@sams.test", tag)
    assert len(got) == 1 and b"over 465" in got[0] and b"with ESMTPSA" in got[0]


def test_dkim_signature_verifies_against_published_key(mail: World) -> None:
    """What a receiver does: verify the DKIM-Signature with the s1._domainkey TXT the lab DNS serves."""
    tag = subject("dkim")
    mail.submit(587, "alice@sams.test", ["bob@sams.test"], tag)
    raw = mail.read("bob@sams.test", tag)[0]
    selector = mail.lab.settings.config.dkim.selector
    verdict = mail.inet(verify_dkim, raw, mail.lab.spec.inet_ipv4)
    assert verdict == {"ok": True, "d": DOMAIN, "s": selector}, verdict
    header = raw.split(b"DKIM-Signature:", 1)[1].split(b"\r\n\t", 1)[0].decode()
    assert f"d={DOMAIN}" in header and f"s={selector}" in header


def test_alice_may_send_as_her_alias(mail: World) -> None:
    """postmaster@ delivers to alice, so she may use it as sender (sender_login_maps)."""
    tag = subject("alias-sender")
    mail.submit(587, "alice@sams.test", ["bob@sams.test"], tag, sender="postmaster@sams.test")
    assert len(mail.read("bob@sams.test", tag)) == 1


# --- mail from the internet (port 25) ---------------------------------------------------------------


def test_inbound_to_user_and_alias(mail: World) -> None:
    tag = subject("inbound")
    data = message(f"someone@{SENDER_DOMAIN}", "team@sams.test, carol@other.test", tag).decode()
    replies = mail.mx(
        [("mail", f"FROM:<someone@{SENDER_DOMAIN}>"), ("rcpt", "TO:<team@sams.test>"),
         ("rcpt", "TO:<carol@other.test>"), ("data", data)]
    )  # fmt: skip
    assert [code for code, _ in replies] == [250, 250, 250, 250], replies
    for user in ("alice@sams.test", "bob@sams.test", "carol@other.test"):
        got = mail.read(user, tag)
        assert len(got) == 1, user
        # Rspamd's verdicts reach the user (milter_headers): SPF passed for the sender's address.
        assert b"Authentication-Results:" in got[0] and b"spf=pass" in got[0], got[0][:2000]


def test_inbound_refusals(mail: World) -> None:
    """Unknown user 550, relaying 554, GTUBE rejected by Rspamd; nothing is accepted to bounce later."""
    tag = subject("gtube")
    replies = mail.mx(
        [("mail", f"FROM:<someone@{SENDER_DOMAIN}>"), ("rcpt", "TO:<nobody@sams.test>"),
         ("rcpt", "TO:<victim@elsewhere.example>"), ("rcpt", "TO:<bob@sams.test>"),
         ("data", message(f"someone@{SENDER_DOMAIN}", "bob@sams.test", tag, body=GTUBE + "\n").decode())]
    )  # fmt: skip
    (mail_from, unknown, relay, bob, data) = replies
    assert mail_from[0] == 250 and bob[0] == 250
    assert unknown[0] == 550 and unknown[1].startswith("5.1.1"), unknown
    assert relay[0] in (454, 554) and "Relay access denied" in relay[1], relay
    assert data[0] == 554 and "Gtube" in data[1], data


def test_no_mail_is_lost_while_rspamd_is_down(mail: World) -> None:
    """milter_default_action = tempfail: with Rspamd stopped, port 25 answers 451, so the sending MTA
    keeps the message (Postfix took no responsibility for it); once Rspamd is back, the sender's
    retry is delivered, scanned."""
    tag = subject("milter-down")
    sender = f"someone@{SENDER_DOMAIN}"
    data = message(sender, "bob@sams.test", tag)
    sh(mail.lab, "systemctl stop rspamd")
    try:
        refused = mail.inet(mx_attempt, mail.host, sender, "bob@sams.test", data)
        assert refused[0] == 451 and refused[1].startswith("4.7.1"), refused
    finally:
        sh(mail.lab, "systemctl start rspamd")
        sh(mail.lab, WAIT_RSPAMD)
    assert mail.read("bob@sams.test", tag, want=1, wait=2) == []  # not delivered unscanned either
    retried = mail.inet(mx_attempt, mail.host, sender, "bob@sams.test", data)
    assert retried[0] == 250, retried
    (got,) = mail.read("bob@sams.test", tag)
    assert b"Authentication-Results:" in got and b"spf=pass" in got  # scanned by Rspamd this time


# A Rspamd process holding its own compiled Hyperscan copy has ~60 MiB of anonymous memory here;
# one that maps the compiled cache files has ~10-15.
RSPAMD_PROCESS_ANON_MIB = 40


def rspamd_anon_mib(lab: Lab) -> dict[str, float]:
    """Each Rspamd process's private (anonymous) memory in MiB, by its role and pid."""
    out = sh(
        lab,
        "for p in $(pgrep -f '^rspamd: '); do"
        " echo \"$p $(awk '/^Pss_Anon:/{print $2}' /proc/$p/smaps_rollup) $(ps -o args= -p $p)\"; done",
    )
    # "<pid> <KiB> rspamd: <role> process ..."
    return {f"{f[3]} {f[0]}": int(f[1]) / 1024 for f in (line.split() for line in out.splitlines())}


def test_rspamd_step_leaves_no_private_hyperscan_copies(lab: Lab) -> None:
    """A Rspamd that starts without its compiled Hyperscan cache (a new host, a new version: here
    the cache is deleted) compiles it into each process's own memory and keeps it there. The rspamd
    step waits for the cache to be complete and restarts it, so every process maps the shared files.
    Found by bench.idle_memory: Rspamd at 268 MiB on a new host, 105 after a restart."""
    cache = services.RSPAMD_CACHE
    sh(lab, f"systemctl stop rspamd && find {cache} -maxdepth 1 -name '*.hs*' -delete && systemctl start rspamd")
    original = next(s for s in program.steps_of(lab.run) if s.name == "mail-rspamd")

    def rspamd_step() -> dict[str, object]:
        staged = Path(original.copy.inputs["source"]["path"])
        return run_step(lab, services.rspamd_step(lab.settings), staged, original.command.inputs.get("stdin"))

    started = time.monotonic()
    summary = rspamd_step()
    took = time.monotonic() - started
    assert summary["script"], summary
    sh(lab, WAIT_RSPAMD)
    anon = rspamd_anon_mib(lab)
    print(f"rspamd step after a start without a cache: {took:.1f} s; anonymous MiB by process: {anon}")
    assert len(anon) >= 3 and max(anon.values()) < RSPAMD_PROCESS_ANON_MIB, anon
    # Run again with the cache complete, the step only reloads: no restart, no wait.
    pid = sh(lab, "systemctl show -P MainPID rspamd").strip()
    rspamd_step()
    assert sh(lab, "systemctl show -P MainPID rspamd").strip() == pid
    # Rspamd rewrites some databases later on; a write past the compile window is no reason to
    # restart (a forced re-apply minutes after the first restarted it for 26 s). The step reads only
    # the files' times, so one rewritten a second past the window is dated so, not waited for.
    window = services.RSPAMD_COMPILE_WINDOW_S
    sh(
        lab,
        'started=$(date -d "$(systemctl show -P ExecMainStartTimestamp rspamd)" +%s);'
        f" touch -d \"@$((started + {window} + 1))\" $(find {cache} -maxdepth 1 -name '*.hs' | head -1)",
    )
    rspamd_step()
    assert sh(lab, "systemctl show -P MainPID rspamd").strip() == pid


def test_no_mail_is_lost_while_opendkim_is_down(mail: World) -> None:
    """milter_default_action = tempfail on the signing path: with OpenDKIM stopped, submission answers
    4xx (the mail client keeps the message) and local mail (sendmail: Sieve redirects and vacation
    replies, cron) waits in the maildrop; once OpenDKIM is back, both go out, signed."""
    client_tag, local_tag = subject("dkim-down-587"), subject("dkim-down-local")
    local = message("alice@sams.test", "bob@sams.test", local_tag).decode()
    sh(mail.lab, "systemctl stop opendkim")
    try:
        data = message("alice@sams.test", "bob@sams.test", client_tag)
        login = mail.login("alice@sams.test")
        refused = mail.inet(
            submit_attempt, mail.host, 587, mail.cafile, login, "alice@sams.test", ["bob@sams.test"], data
        )
        # A temporary refusal (Postfix answers 454 4.3.0 here): the client keeps the message and retries.
        assert 400 <= refused[0] < 500 and refused[1].startswith("4."), refused
        sh(mail.lab, "runuser -u vmail -- /usr/sbin/sendmail -f alice@sams.test bob@sams.test", stdin=local)
        time.sleep(2)  # pickup hands it to cleanup at once; the milter's tempfail leaves it in maildrop
        assert sh(mail.lab, f"grep -rl {local_tag} {services.POSTFIX_SPOOL}/maildrop").strip()
        assert mail.read("bob@sams.test", local_tag, want=1, wait=1) == []  # not sent unsigned either
    finally:
        sh(mail.lab, "systemctl start opendkim")
        sh(mail.lab, WAIT_OPENDKIM)
    sh(mail.lab, "postkick public pickup W")  # pickup's next 60 s scan, now
    mail.submit(587, "alice@sams.test", ["bob@sams.test"], client_tag)  # the client's retry
    for tag in (client_tag, local_tag):
        (raw,) = mail.read("bob@sams.test", tag)
        verdict = mail.inet(verify_dkim, raw, mail.lab.spec.inet_ipv4)
        assert verdict["ok"] and verdict["d"] == DOMAIN, (tag, verdict)


def test_no_auth_on_port_25(mail: World) -> None:
    out = mail.inet(dialogue, mail.host, 25, [("starttls", ""), ("auth", "PLAIN AGFsaWNlAHg=")], mail.cafile)
    assert "auth" not in out["features"] and "starttls" not in out["features"]  # after STARTTLS
    assert out["replies"][0][0] == 220
    assert out["replies"][1][0] in (502, 503), out  # "Error: authentication not enabled"
    plain = mail.inet(dialogue, mail.host, 25, [])
    assert "auth" not in plain["features"] and "starttls" in plain["features"]


def test_submission_refusals(mail: World) -> None:
    """587: no AUTH before STARTTLS; 553 when alice claims to be bob."""
    import base64

    token = base64.b64encode(b"\0alice@sams.test\0" + mail.passwords["alice@sams.test"].encode()).decode()
    out = mail.inet(dialogue, mail.host, 587, [("auth", f"PLAIN {token}"), ("mail", "FROM:<alice@sams.test>")])
    assert "auth" not in out["features"], out
    (auth, mail_from) = out["replies"]
    assert auth[0] == 530 and "STARTTLS" in auth[1], auth
    assert mail_from[0] == 530, mail_from
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        mail.submit(587, "alice@sams.test", ["carol@other.test"], subject("spoof"), sender="bob@sams.test")
    code, text = refused.value.recipients["carol@other.test"]
    assert code == 553 and b"not owned by user" in text, text


def test_over_quota(mail: World) -> None:
    """tiny@ (1M): the message that crosses the quota is accepted (quota_storage_grace); once over,
    RCPT gets 552 5.2.2 during the SMTP session (Dovecot's quota-status policy), never a later bounce."""
    lab = mail.lab
    # Start empty (the test can run again on the same lab).
    sh(lab, "doveadm expunge -u tiny@sams.test mailbox INBOX all && doveadm quota recalc -u tiny@sams.test")
    for i in (1, 2):  # 2 x 600 KB: the second one crosses 1 MB
        tag = subject(f"quota{i}")
        replies = mail.mx(
            [("mail", f"FROM:<someone@{SENDER_DOMAIN}>"), ("rcpt", "TO:<tiny@sams.test>"),
             ("data", message(f"someone@{SENDER_DOMAIN}", "tiny@sams.test", tag, size=600_000).decode())]
        )  # fmt: skip
        assert [c for c, _ in replies] == [250, 250, 250], replies
        assert len(mail.read("tiny@sams.test", tag)) == 1
    usage = sh(lab, "doveadm -f flow quota get -u tiny@sams.test")
    assert "Type=MESSAGE Value=2 " in usage, usage
    assert int(usage.split("Type=STORAGE Value=")[1].split()[0]) > 1024, usage  # over the 1024 KiB limit
    replies = mail.mx([("mail", f"FROM:<someone@{SENDER_DOMAIN}>"), ("rcpt", "TO:<tiny@sams.test>")])
    assert replies[1][0] == 552 and replies[1][1].startswith("5.2.2") and "Mailbox full" in replies[1][1], replies
    # Submission too: alice learns it at once.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        mail.submit(587, "alice@sams.test", ["tiny@sams.test"], subject("quota3"))
    assert refused.value.recipients["tiny@sams.test"][0] == 552


# An internet address of its own for the reset test's refused logins: fail2ban counts them by address.
RESETTER = "198.18.0.67"


def test_a_password_reset_counts_once_the_runbook_flushes_the_auth_cache(mail: World) -> None:
    """Dovecot caches users (auth_cache_size): after a reset the runbook's way (UPDATE, then `doveadm
    auth cache flush <user>`), the new password works and the old one is refused at once. Before the
    flush the cache answers, with the old hash: that is what makes the flush the runbook's step."""
    lab, user = mail.lab, "carol@other.test"
    old, new = mail.passwords[user], "carol-E2E-reset-2"
    scheme = lab.settings.config.users.password_scheme
    ns, bridge = NAMES.ns_inet, NAMES.bridge
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{RESETTER}/32", "dev", bridge], check=True)

    def logins(*attempts: tuple[str, str]) -> list[str]:
        return mail.inet(imap_logins, mail.host, mail.cafile, RESETTER, list(attempts))

    try:
        # Cached with a success, then a failure: after a failed attempt the cache refuses a new password.
        assert logins((user, old), (user, "not-carols")) == ["ok", "failed"]
        digest = sh(lab, f"doveadm pw -s {scheme} -p '{new}'").strip()
        local, domain = user.split("@")
        where = f"local_part = '{local}' AND domain = '{domain}'"
        sh(lab, PSQL, stdin=f"UPDATE users SET password_hash = '{digest}' WHERE {where};")  # the runbook's UPDATE
        assert logins((user, new), (user, old)) == ["failed", "ok"]
        flushed = sh(lab, f"doveadm auth cache flush {user}").strip()  # its passdb and userdb entries
        assert re.fullmatch(r"[1-9]\d* cache entries flushed", flushed), flushed
        assert logins((user, new), (user, old)) == ["ok", "failed"]
    finally:
        write_hashes(lab, {user: sh(lab, f"doveadm pw -s {scheme} -p '{old}'").strip()})
        sh(lab, "fail2ban-client set dovecot unbanip " + RESETTER + " || true")
        subprocess.run(["ip", "-n", ns, "addr", "del", f"{RESETTER}/32", "dev", bridge], check=False)


def test_plaintext_imap_login_refused(mail: World) -> None:
    out = mail.inet(imap_plaintext_login, mail.host, mail.login("alice@sams.test"))
    assert "LOGINDISABLED" in out["capabilities"] and "STARTTLS" in out["capabilities"], out
    assert out["login"] != "logged in", out


def test_a_reused_imap_process_serves_each_user_only_their_mail(mail: World) -> None:
    """imap processes serve up to 100 logins in turn (dovecot.conf): alice and bob, alternating, each
    see only their own mail, and at least one process did serve both of them."""
    tag = subject("reuse")
    mail.submit(587, "alice@sams.test", ["bob@sams.test"], tag)
    assert len(mail.read("bob@sams.test", tag)) == 1
    mark = journal.cursor(mail.lab.shell)
    users = ["alice@sams.test", "bob@sams.test"] * 4
    counts = mail.inet(imap_count, mail.host, mail.cafile, [mail.login(u) for u in users], tag)
    assert counts == [0, 1] * 4, counts
    log = journal.since(mail.lab.shell, mark, "dovecot")
    served: dict[str, set[str]] = {}
    for user, pid in re.findall(r"^imap\(([^)]+)\)<(\d+)><[^>]*>: (?:Disconnected: )?Logged out", log, re.M):
        served.setdefault(pid, set()).add(user)
    assert set().union(*served.values()) == {"alice@sams.test", "bob@sams.test"}, (served, log[-2000:])
    assert any(len(names) == 2 for names in served.values()), (served, log[-2000:])


def test_deliveries_share_one_lmtp_session(mail: World) -> None:
    """Postfix keeps its LMTP session to Dovecot for the next message (lmtp_connection_cache_destinations),
    even one at a time with no backlog, where Postfix's on-demand caching would not."""
    sender = f"someone@{SENDER_DOMAIN}"
    tags = [subject(f"lmtp-reuse-{i}") for i in range(3)]
    mark = journal.cursor(mail.lab.shell)
    queued = []
    for tag in tags:  # one after the other: each is delivered before the next is sent
        code, text = mail.inet(mx_attempt, mail.host, sender, "bob@sams.test", message(sender, "bob@sams.test", tag))
        assert code == 250, (code, text)
        queued.append(text.rsplit(" ", 1)[-1])
        assert len(mail.read("bob@sams.test", tag)) == 1
    log = journal.since(mail.lab.shell, mark, tag="postfix/lmtp")
    lines = [line for line in log.splitlines() if any(line.startswith(f"{q}: to=<") for q in queued)]
    assert len(lines) == 3, (queued, log[-3000:])
    # The first delivery may open the session; the later ones arrive within its 2 s idle time.
    assert all("conn_use=" in line for line in lines[1:]), lines


def test_dovecot_gets_three_times_the_cpu_share(lab: Lab) -> None:
    """dovecot.service's drop-in: its cgroup weight, and (this lab's kernel shares CPU by session, as
    hosts without systemd's cpu controller do) its session's nice, also after a restart."""

    def share() -> tuple[str, str]:
        out = sh(lab, "systemctl show -p CPUWeight --value dovecot && "
                      "cat /proc/$(systemctl show -p MainPID --value dovecot)/autogroup")  # fmt: skip
        weight, autogroup = out.splitlines()
        return weight, autogroup.rsplit(" ", 1)[-1]

    expected = (str(services.DOVECOT_CPU_WEIGHT), str(services.DOVECOT_AUTOGROUP_NICE))
    assert share() == expected
    sh(lab, "systemctl restart dovecot")  # a new session: ExecStartPost gives it the nice
    assert share() == expected


# --- password guessing ----------------------------------------------------------------------------

# A second internet address for the guesser: its ban (and Dovecot's per-address auth penalty) must not
# touch the address the other tests send and read from.
GUESSER = "198.18.0.66"


def guess_passwords(host: str, cafile: str, kind: str, source: str, attempts: int) -> list[str]:
    """Wrong passwords from `source`: "denied" per refused login, "cut" for a session the ban ended,
    "refused" once the port is closed to it."""
    context = tls_context(cafile)
    outcomes = []
    for _ in range(attempts):
        try:
            if kind == "imap":
                line = imap_login_from(host, context, source, "alice@sams.test", "not-her-password")
                outcomes.append("denied" if b"AUTHENTICATIONFAILED" in line else line.decode())
            else:
                with smtplib.SMTP(host, 587, timeout=30, source_address=(source, 0)) as client:
                    client.starttls(context=context)
                    try:
                        client.login("alice@sams.test", "not-her-password")
                        outcomes.append("accepted")
                    except smtplib.SMTPAuthenticationError:
                        outcomes.append("denied")
        except ConnectionRefusedError:
            outcomes.append("refused")
            break
        except (smtplib.SMTPServerDisconnected, ConnectionResetError, TimeoutError):
            # The ban came while this session was open (the postfix-sasl jail counts a failed session
            # when it ends, and the client has begun its next one): the rest of it is dropped.
            outcomes.append("cut")
    return outcomes


@pytest.mark.parametrize(("jail", "kind"), [("dovecot", "imap"), ("postfix-sasl", "smtp")])
def test_password_guessing_gets_the_address_banned(mail: World, jail: str, kind: str) -> None:
    """fail2ban (components/mail/etc/fail2ban): wrong passwords on IMAPS, or SMTP AUTH on 587, get
    the guessing address banned from the login ports (Dovecot 2.4's log lines need SAMS's filter);
    the other internet address keeps reading mail."""
    ns, bridge = NAMES.ns_inet, NAMES.bridge
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{GUESSER}/32", "dev", bridge], check=True)
    try:
        outcomes = mail.inet(guess_passwords, mail.host, mail.cafile, kind, GUESSER, 12, timeout=300)
        assert outcomes[0] == "denied" and outcomes[-1] == "refused", outcomes
        status = sh(mail.lab, f"fail2ban-client status {jail}")
        assert re.search(rf"Banned IP list:\s.*\b{re.escape(GUESSER)}\b", status), status
        if jail == "postfix-sasl":  # the ban came through the jail's narrowed match, which fail2ban loaded
            loaded = sh(mail.lab, f"fail2ban-client get {jail} journalmatch").strip().splitlines()[-1]
            assert loaded == services.postfix_sasl_journalmatch(), loaded
        assert mail.lab.spec.inet_ipv4 not in status
        tag = subject(f"after-{jail}")
        mail.submit(587, "alice@sams.test", ["bob@sams.test"], tag)  # the other address is not banned
        assert len(mail.read("bob@sams.test", tag)) == 1
    finally:
        sh(mail.lab, f"fail2ban-client set {jail} unbanip {GUESSER} || true")
        subprocess.run(["ip", "-n", ns, "addr", "del", f"{GUESSER}/32", "dev", bridge], check=False)


# --- exposure ----------------------------------------------------------------------------------------


def test_internal_services_unreachable_from_the_internet(mail: World) -> None:
    for port in (5432, 4190, 11334, 11333, 6379, 53):
        assert mail.inet(banner, mail.lab.spec.public_ipv4, port) == "filtered", port
    # The host's resolver is no open resolver: UDP 53 on the public address is silent too.
    assert mail.inet(dns_silent, mail.lab.spec.public_ipv4, f"mx.{RECEIVER_DOMAIN}")


def test_rspamd_asks_the_hosts_own_resolver(mail: World) -> None:
    """Unbound on loopback answers (forwarding to the lab DNS here) and is what Rspamd is told to ask."""
    listening = sh(mail.lab, "ss -Hlnup 'sport = :53' | awk '{print $4}'").split()
    assert listening == ["127.0.0.1:53"], listening
    # A raw A query with the host's own python3 (no DNS tools on the host): rcode, answers, address.
    probe = f"""
import socket, struct
name = b"".join(bytes([len(p)]) + p.encode() for p in "mx.{RECEIVER_DOMAIN}".split("."))
query = struct.pack(">HHHHHH", 0x5353, 0x0100, 1, 0, 0, 0) + name + b"\\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(query, ("127.0.0.1", 53))
reply = s.recv(4096)
print(reply[3] & 15, struct.unpack(">H", reply[6:8])[0], socket.inet_aton("{mail.lab.spec.receiver_ipv4}") in reply)
"""
    assert sh(mail.lab, "python3", stdin=probe).split() == ["0", "1", "True"]
    options = sh(mail.lab, "rspamadm configdump options 2>/dev/null")
    assert re.search(r'nameserver \[\s*"127\.0\.0\.1:53",?\s*\]', options), options


def test_rspamd_logs_one_line_per_message(mail: World) -> None:
    """local.d/logging.inc, as the running Rspamd applies it: a scanned message leaves its task
    summary (queue ID, action, symbols) and no other line carrying that task's log tag."""
    tag = subject("rspamd-log")
    data = message(f"someone@{SENDER_DOMAIN}", "bob@sams.test", tag)
    message_id = email.message_from_bytes(data)["Message-ID"]
    replies = mail.mx(
        [("mail", f"FROM:<someone@{SENDER_DOMAIN}>"), ("rcpt", "TO:<bob@sams.test>"), ("data", data.decode())]
    )
    assert [c for c, _ in replies] == [250, 250, 250], replies
    assert len(mail.read("bob@sams.test", tag)) == 1  # scanned and delivered: the task has ended
    log = "/var/log/rspamd/rspamd.log"
    summary = sh(mail.lab, f"grep -F 'id: {message_id}' {log}").splitlines()
    assert len(summary) == 1 and "rspamd_task_write_log" in summary[0], summary
    task = re.search(r"\(\w+\) (<\w+>);", summary[0])
    assert task, summary[0]
    lines = sh(mail.lab, f"grep -F '{task.group(1)};' {log}").splitlines()
    assert lines == summary, lines  # Debian's "info" level logs about ten lines for the same task


def test_managesieve_through_the_tunnel(mail: World) -> None:
    first = mail.admin(banner, mail.lab.spec.vpn_host, 4190)
    assert first.startswith('"IMPLEMENTATION"'), first


# --- the daemons' own checks and the reload promise ------------------------------------------------


@pytest.mark.parametrize(
    "command",
    ["postfix check", "postconf -n", "doveconf -n", "opendkim -n", "rspamadm configtest"],
)
def test_daemon_checkers_pass(lab: Lab, command: str) -> None:
    proc = lab.shell.run(["sudo", "-n", "sh", "-c", command], check=False)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, (command, stderr)
    assert "warning" not in stderr.lower() and "error" not in stderr.lower(), (command, stderr)


UNITS = ("dovecot", "opendkim", "rspamd", "redis-server", "sams-postgres", "postfix")


def main_pids(lab: Lab) -> dict[str, str]:
    out = sh(lab, "for u in " + " ".join(UNITS) + "; do systemctl show -p MainPID --value $u; done")
    return dict(zip(UNITS, out.split(), strict=True))


def test_config_change_reloads_only_postfix(lab: Lab, tmp_path: Path) -> None:
    """A changed main.cf reloads Postfix and nothing else; every other daemon keeps its process."""
    original = next(s for s in program.steps_of(lab.run) if s.name == "mail-postfix")
    stdin = original.command.inputs.get("stdin")
    spec = services.postfix_step(lab.settings)
    files = tuple(
        File(f.path, f.content + "# e2e: a comment-only change\n", f.mode, f.owner, f.group)
        if f.path == "/etc/postfix/main.cf"
        else f
        for f in spec.files
    )
    changed = StepSpec(spec.name, files, spec.services, spec.script, spec.late_values, spec.description)
    before = main_pids(lab)
    mark = journal.cursor(lab.shell)
    try:
        summary = run_step(lab, changed, stage(changed, tmp_path), stdin)
        assert summary["changed"] == ["/etc/postfix/main.cf"], summary
        # reload-or-restart: a running Postfix reloads (its master keeps its pid, below)
        assert summary["services"] == ["reload-or-restart:postfix"], summary
        assert main_pids(lab) == before  # a reload keeps Postfix's master too
        assert "reload -- version" in journal.since(lab.shell, mark, "postfix")
    finally:
        restored = run_step(lab, spec, Path(original.copy.inputs["source"]["path"]), stdin)
    assert restored["changed"] == ["/etc/postfix/main.cf"] and restored["services"] == ["reload-or-restart:postfix"]
    assert main_pids(lab) == before
