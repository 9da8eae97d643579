"""The From: rules of rspamd.local.lua, judged by Debian 13's real Rspamd in a scratch trixie tree.

Rspamd runs there with its packaged configuration plus SAMS's rendered rspamd.local.lua, with a
normal worker on loopback so that `rspamc` can hand it messages with a login (-u), an envelope
sender (-F) and a client address (-i), as the milter does. No network: DNS lookups fail, which
is what makes the port-25 rule's "not vouched for" case here (the lab tests the DKIM/SPF passes).

    sudo .venv/bin/python -m pytest -m chroot tests/mailcore/test_sender_rules.py
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from components.mail import services
from settings import Settings

pytestmark = pytest.mark.chroot

RSPAMD_HTTP = "127.0.0.1:11333"  # Debian's normal worker: scans
RSPAMD_CONTROLLER = "127.0.0.1:11334"  # its controller: answers `stat` once the workers run

# In a network namespace of its own (unshare -n): loopback only, so neither another Rspamd on this
# machine's 11333/11334 nor anything outside is in reach. Starts Rspamd, scans each message file in
# /tmp/scan (its rspamc arguments in the .args file beside it), prints one JSON line per message,
# and stops Rspamd (waiting for its main process to end) so that the tree can be unmounted.
SCAN_ALL = f"""ip link set lo up
install -d -o _rspamd -g _rspamd /run/rspamd
rspamd -u _rspamd -g _rspamd >/tmp/rspamd.out 2>&1
trap 'pid=$(cat /run/rspamd/rspamd.pid); kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done' EXIT
for i in $(seq 120); do rspamc -h {RSPAMD_CONTROLLER} stat >/dev/null 2>&1 && break; sleep 0.5; done
rspamc -h {RSPAMD_CONTROLLER} stat >/dev/null || {{ tail -n 20 /var/log/rspamd/rspamd.log >&2; exit 1; }}
for m in /tmp/scan/*.eml; do
    # shellcheck disable=SC2046
    printf '%s ' "$(basename "$m" .eml)"; rspamc -h {RSPAMD_HTTP} -j --compact $(cat "${{m%.eml}}.args") < "$m"; echo
done
"""

# name -> (From: lines, envelope sender, login or None, client address)
Case = tuple[list[str], str, str | None, str]


def scan_all(lab_settings: Settings, root: Path, cases: dict[str, Case]) -> dict[str, dict[str, Any]]:
    """Every case through a real Rspamd that has SAMS's rspamd.local.lua: name -> rspamc's JSON."""
    import subprocess

    (step,) = [s for s in services.mail_steps(lab_settings) if s.name == "rspamd"]
    (lua,) = [f for f in step.files if f.path == f"{services.RSPAMD_LOCAL}/rspamd.local.lua"]
    (root / lua.path.lstrip("/")).write_text(lua.content)
    # Nothing to ask: DNS fails at once instead of waiting for resolvers that are not there.
    options = 'dns { nameserver = ["127.0.0.1:53"]; timeout = 0.5s; retransmits = 1; }\n'
    (root / "etc/rspamd/local.d/options.inc").write_text(options)
    (root / "tmp/scan").mkdir(parents=True)
    for index, (headers, sender, login, ip) in enumerate(cases[name] for name in sorted(cases)):
        lines = [*headers, "To: <someone@receiver.example>", "Subject: t", "Message-ID: <t@x>", "", "hi", ""]
        (root / f"tmp/scan/{index}.eml").write_text("\r\n".join(lines))
        args = ["-F", sender, "-i", ip, *(["-u", login] if login else [])]
        (root / f"tmp/scan/{index}.args").write_text(" ".join(args))
    (root / "tmp/scan.sh").write_text(SCAN_ALL)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    result = subprocess.run(
        ["unshare", "-n", "chroot", str(root), "/bin/sh", "-eu", "/tmp/scan.sh"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    names = sorted(cases)
    out = {}
    for line in result.stdout.splitlines():
        if line.strip():
            number, _, payload = line.partition(" ")
            out[names[int(number)]] = dict(json.loads(payload))
    assert sorted(out) == names, result.stdout[-2000:]
    return out


def encoded(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


ALICE = "alice@sams.test"
SUBMITTED = ("198.18.0.5", ALICE)  # a mail client on the internet, logged in as alice
REFUSED = {
    "another user": (["From: Carol <carol@other.test>"], "is not the address you send as"),
    "display name": (['From: "alice@sams.test" <carol@other.test>'], "is not the address you send as"),
    "display name naming another": (['From: "carol@other.test" <alice@sams.test>'], "also names carol@other.test"),
    "unquoted name": (["From: alice@sams.test <carol@other.test>"], "is not the address you send as"),
    "two addresses": (["From: alice@sams.test, carol@other.test"], "exactly one address"),
    "two headers": (["From: <alice@sams.test>", "From: <carol@other.test>"], "more than one From: header"),
    "encoded display name": ([f"From: {encoded('carol@other.test')} <alice@sams.test>"], "also names carol@other"),
    "encoded address": ([f"From: {encoded('carol@other.test')}"], "exactly one address"),
    "case": (["From: <Carol@OTHER.test>"], "From: <carol@other.test> is not the address you send as"),
    "group": (["From: undisclosed-recipients:;"], "exactly one address"),
    "none": ([], "no From: header"),
    "alias, not the envelope": (["From: <postmaster@other.test>"], "is not the address you send as"),
}
PASSED: dict[str, Case] = {
    "own": (["From: Alice <alice@sams.test>"], ALICE, ALICE, "198.18.0.5"),
    "own, case and encoded name": (["From: =?utf-8?q?Alice_Liddell?= <ALICE@Sams.Test>"], ALICE, ALICE, "198.18.0.5"),
    # postmaster@other.test delivers to alice: Postfix lets her use it as MAIL FROM, and then as From:.
    "alias as envelope too": (["From: <postmaster@other.test>"], "postmaster@other.test", ALICE, "198.18.0.5"),
    # Port 25: another domain's mail is left to scoring; this host's own processes are ours.
    "port 25, another domain": (["From: <x@sender.example>"], "x@sender.example", None, "198.18.0.1"),
    "local process": ([f"From: <{ALICE}>"], ALICE, None, "127.0.0.1"),
}
STRANGERS: dict[str, Case] = {
    "port 25, header claims sams.test": ([f"From: <{ALICE}>"], "x@sender.example", None, "198.18.0.1"),
    "port 25, envelope claims sams.test": (["From: <x@sender.example>"], ALICE, None, "198.18.0.1"),
}


@pytest.fixture(scope="module")
def verdicts(lab_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    from lab.trixie_chroot import mounted, scratch

    cases: dict[str, Case] = {**PASSED, **STRANGERS}
    cases.update({name: (headers, ALICE, ALICE, "198.18.0.5") for name, (headers, _) in REFUSED.items()})
    cases["null envelope sender"] = ([f"From: <{ALICE}>"], "<>", ALICE, "198.18.0.5")
    with scratch(tmp_path_factory.mktemp("rspamd-rules")) as root, mounted(root):
        return scan_all(lab_settings, root, cases)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_submitted_from_must_be_the_envelope_sender(verdicts: dict[str, dict[str, Any]], case: str) -> None:
    result, why = verdicts[case], REFUSED[case][1]
    assert result["action"] == "reject", (case, result)
    assert why in result["messages"]["smtp_message"], (case, result["messages"])


def test_a_null_envelope_sender_vouches_for_no_from(verdicts: dict[str, dict[str, Any]]) -> None:
    """MAIL FROM:<> passes Postfix's ownership check (there is no address to own): no From: can follow it."""
    result = verdicts["null envelope sender"]
    assert result["action"] == "reject", result
    assert "same address as envelope sender" in result["messages"]["smtp_message"], result["messages"]


@pytest.mark.parametrize("case", sorted(PASSED))
def test_owned_and_foreign_senders_pass(verdicts: dict[str, dict[str, Any]], case: str) -> None:
    result = verdicts[case]
    assert result["action"] != "reject" and "smtp_message" not in result.get("messages", {}), (case, result)


def test_port_25_header_claim_of_a_hosted_domain_is_refused(verdicts: dict[str, dict[str, Any]]) -> None:
    """No DKIM signature of sams.test (there is no key to ask for) and no SPF of it to pass: refused."""
    result = verdicts["port 25, header claims sams.test"]
    assert result["action"] == "reject", result
    assert "sams.test is hosted here" in result["messages"]["smtp_message"], result["messages"]


def test_port_25_claim_that_dns_cannot_settle_is_deferred(verdicts: dict[str, dict[str, Any]]) -> None:
    """The envelope claims sams.test and its SPF lookup fails (no DNS here): a 4xx, never a 5xx for an
    outage, so a genuine sender retries."""
    result = verdicts["port 25, envelope claims sams.test"]
    assert result["action"] == "soft reject", result
    assert "temporary DNS failure checking sams.test" in result["messages"]["smtp_message"], result["messages"]
