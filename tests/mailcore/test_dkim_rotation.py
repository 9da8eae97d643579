"""A DKIM rotation with the real OpenDKIM of Debian 13, checked the way a receiver checks it.

The lab stack with `sams:dkim.rotation` (s1 -> s2) goes through its phases in one trixie tree: in
each phase the dkim-keys and opendkim steps are installed as sams-apply installs them (and the
opendkim step's script run), OpenDKIM is started once and then reloaded (SIGUSR1, what the step's
`reload` does), a message is signed by talking the milter protocol to its socket the way Postfix
does, and dkimpy verifies the signature against the TXT values the DNS plan publishes in that phase.

    sudo .venv/bin/python -m pytest -m chroot tests/mailcore/test_dkim_rotation.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dkim
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import mockrun
import settings
from components.dns.plan import dkim_ref, plan
from components.dns.records import Ref
from components.keys.derive import dkim_public_key_b64, dkim_record_value
from components.keys.resources import DkimKey
from components.keys.rotation import DkimPhase, dkim_phase
from components.mail import dkim_keys_to_send, dkim_step, services
from lab.trixie_chroot import run_in
from tests.mailcore.conftest import DUMMY_LATE, PROJECT, install_step, run_step_script

pytestmark = pytest.mark.chroot

ROTATION = {
    "selector": "s1",
    "rotation": {"to": "s2", "started": "2026-05-04T09:00:00Z", "switchAfter": "48h", "withdrawAfter": "7d"},
}
BEFORE = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
PUBLISHING = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
SWITCHED = datetime(2026, 5, 6, 9, 0, tzinfo=UTC)
WITHDRAWN = datetime(2026, 5, 11, 9, 0, tzinfo=UTC)
SOCKET = f"{services.POSTFIX_SPOOL}/{services.OPENDKIM_MILTER}"


def stack(dkim_config: Mapping[str, object]) -> settings.Settings:
    return settings.load("lab", {**mockrun.stack_config("lab"), "sams:dkim": json.dumps(dkim_config)}, PROJECT)


# --- a milter client: what Postfix's cleanup says to OpenDKIM --------------------------------------


def _packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + cmd + data


def _read(sock: socket.socket) -> tuple[bytes, bytes]:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            buf += chunk
        return buf

    (length,) = struct.unpack("!I", exactly(4))
    body = exactly(length)
    return body[:1], body[1:]


# Protocol steps (SMFIP_*) the milter may ask us to skip (NO*) or not to answer (NR_*).
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH, NR_HDR = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80
NODATA, NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA, NR_EOH, NR_BODY = (
    0x200, 0x1000, 0x2000, 0x4000, 0x8000, 0x10000, 0x40000, 0x80000
)  # fmt: skip


def milter_sign(socket_path: Path, sender: str, rcpt: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """Send one message through the milter at `socket_path` (milter protocol 6, as Postfix speaks
    it for a local submission) and return it with the headers the milter added, CRLF line ends."""
    added: list[tuple[int, str, str]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(socket_path))
        # version 6; we accept every action; we can skip every step except leading-space headers.
        sock.sendall(_packet(b"O", struct.pack("!III", 6, 0x1FF, 0xFFFFF)))
        cmd, data = _read(sock)
        assert cmd == b"O", cmd
        _, _, proto = struct.unpack("!III", data[:12])

        def step(cmd: bytes, data: bytes, skip: int, no_reply: int) -> None:
            if proto & skip:
                return
            sock.sendall(_packet(cmd, data))
            if proto & no_reply:
                return
            while True:
                reply, payload = _read(sock)
                if reply == b"p":  # progress
                    continue
                assert reply in (b"c", b"s"), f"milter answered {reply!r} {payload!r} to {cmd!r}"
                return

        def macros(cmd: bytes, pairs: dict[str, str]) -> None:
            sock.sendall(
                _packet(b"D", cmd + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs.items()))
            )

        macros(b"C", {"j": "mail.sams.test", "{daemon_name}": "ORIGINATING"})
        step(b"C", b"localhost\x004" + struct.pack("!H", 40000) + b"127.0.0.1\0", NOCONNECT, NR_CONN)
        step(b"H", b"localhost\0", NOHELO, NR_HELO)
        macros(b"M", {"i": "4ABCDEF123", "{mail_addr}": sender})
        step(b"M", f"<{sender}>\0".encode(), NOMAIL, NR_MAIL)
        step(b"R", f"<{rcpt}>\0".encode(), NORCPT, NR_RCPT)
        step(b"T", b"", NODATA, NR_DATA)
        for name, value in headers:
            step(b"L", name.encode() + b"\0" + value.encode() + b"\0", NOHDRS, NR_HDR)
        step(b"N", b"", NOEOH, NR_EOH)
        step(b"B", body, NOBODY, NR_BODY)
        sock.sendall(_packet(b"E"))
        while True:
            reply, payload = _read(sock)
            if reply == b"h":
                raw_name, raw_value, _ = payload.split(b"\0")
                added.append((-1, raw_name.decode(), raw_value.decode()))
            elif reply == b"i":
                (index,) = struct.unpack("!I", payload[:4])
                raw_name, raw_value, _ = payload[4:].split(b"\0")
                added.append((index, raw_name.decode(), raw_value.decode()))
            elif reply in (b"c", b"a"):
                break
            else:
                assert reply == b"p", f"milter answered {reply!r} {payload!r} at end of message"
        sock.sendall(_packet(b"Q"))
    lines = list(headers)
    for index, name, value in added:
        lines.insert(index if index >= 0 else len(lines), (name, value))
    head = b"".join(
        f"{n}: {v.lstrip()}".replace("\r\n", "\n").replace("\n", "\r\n").encode() + b"\r\n" for n, v in lines
    )
    return head + b"\r\n" + body


# --- the phases ------------------------------------------------------------------------------------


@dataclass
class Signed:
    phase: str
    selector: str
    message: bytes


def _new_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


class Host:
    """The trixie tree with OpenDKIM running from the installed config."""

    def __init__(self, root: Path, domains: list[str]):
        self.root, self.domains = root, domains
        # What the tls.PrivateKey resources hold: one key per (domain, selector), made once.
        self.pems = {(d, s): _new_key() for d in domains for s in ("s1", "s2")}
        self.opendkim: subprocess.Popen[str] | None = None

    def apply(self, s: settings.Settings, phase: DkimPhase) -> None:
        """The dkim-keys and opendkim steps of this phase, then OpenDKIM started or reloaded."""
        signing = {d: DkimKey(phase.signing, None, None) for d in self.domains}  # type: ignore[arg-type]
        published = {d: tuple(DkimKey(sel, None, None) for sel in phase.published) for d in self.domains}  # type: ignore[arg-type]
        late = dict(DUMMY_LATE)
        late.update({name: self.pems[(d, k.selector)] for d, name, k in dkim_keys_to_send(signing, published)})
        install_step(self.root, dkim_step(signing, published), late)
        (opendkim,) = [spec for spec in services.mail_steps(s, phase) if spec.name == "opendkim"]
        changed = install_step(self.root, opendkim, late)
        if self.opendkim is None:
            # systemd makes the pid file's directory (RuntimeDirectory); /run is empty here.
            assert (
                run_in(self.root, ["install", "-d", "-o", "opendkim", "-g", "opendkim", "/run/opendkim"]).returncode
                == 0
            )
            self.opendkim = subprocess.Popen(
                ["chroot", str(self.root), "opendkim", "-f", "-x", "/etc/opendkim.conf"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            )
            deadline = time.monotonic() + 30
            while not (self.root / SOCKET.lstrip("/")).exists():
                assert self.opendkim.poll() is None, self.opendkim.communicate()[0]
                assert time.monotonic() < deadline, "OpenDKIM did not open its socket"
                time.sleep(0.1)
        else:
            os.kill(self.opendkim.pid, signal.SIGUSR1)  # what `systemctl reload opendkim` sends
            time.sleep(1)
        run_step_script(self.root, opendkim, late, changed)

    def sign(self, phase_name: str, domain: str) -> Signed:
        msg = milter_sign(
            self.root / SOCKET.lstrip("/"),
            f"alice@{domain}",
            "someone@example.net",
            [
                ("From", f"Alice <alice@{domain}>"),
                ("To", "someone@example.net"),
                ("Subject", f"signed while {phase_name}"),
                ("Date", "Mon, 04 May 2026 09:30:00 +0000"),
                ("Message-ID", f"<{phase_name}.{domain}@sams.test>"),
            ],
            f"Sent in the {phase_name} phase.\r\n".encode(),
        )
        assert msg.startswith(b"DKIM-Signature:"), msg[:300]
        header = (
            msg.split(b"\r\n\r\n")[0].split(b"\r\n", 1)[0]
            + b" "
            + b" ".join(
                line.strip() for line in msg.split(b"\r\n\r\n")[0].split(b"\r\n")[1:] if line[:1] in (b" ", b"\t")
            )
        )
        tags = dict(re.findall(rb"\b([ds])=([A-Za-z0-9.-]+)", header))
        assert tags[b"d"] == domain.encode(), header
        return Signed(phase_name, tags[b"s"].decode(), msg)

    def stop(self) -> None:
        if self.opendkim is not None:
            self.opendkim.terminate()
            self.opendkim.wait(timeout=10)


def published_txt(s: settings.Settings, phase: DkimPhase, pems: dict[tuple[str, str], str]) -> dict[str, bytes]:
    """name -> TXT data as a resolver hands it to dkimpy: the plan's records in presentation format
    (quoted 255-byte strings, as Cloudflare and zone files get them), parsed back and joined."""
    resolved = {"ipv4": "198.18.0.10"}
    resolved.update({dkim_ref(d, sel).key: dkim_record_value(dkim_public_key_b64(pems[(d, sel)])) for d, sel in pems})
    out = {}
    for record in plan(s, has_ipv6=False, dkim=phase):
        if record.type == "TXT" and isinstance(record.data, Ref) and "._domainkey." in record.name:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, record.text(resolved))
            assert all(len(part) <= 255 for part in rdata.strings)  # type: ignore[attr-defined]
            out[record.name] = b"".join(rdata.strings)  # type: ignore[attr-defined]
    return out


def verifies(message: bytes, txt: dict[str, bytes]) -> bool:
    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        return txt.get(text.rstrip("."))

    return bool(dkim.verify(message, dnsfunc=dnsfunc))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    if os.geteuid() != 0:
        pytest.fail("the chroot tests need root (mount, chroot): run them through ./run test")
    from lab.trixie_chroot import mounted, scratch

    lab = stack(ROTATION)
    with scratch(tmp_path_factory.mktemp("dkim-rotation")) as root, mounted(root):
        base = services.mail_base_step(lab)
        run_step_script(root, base, DUMMY_LATE, install_step(root, base, DUMMY_LATE))
        h = Host(root, [d.name for d in lab.mail.domains])
        try:
            yield h
        finally:
            h.stop()


def test_mail_signed_before_during_and_after_the_rotation_verifies(host: Host) -> None:
    rotating, finished = stack(ROTATION), stack({"selector": "s2"})
    phases = {
        "before": (rotating, dkim_phase(rotating.config.dkim, BEFORE)),
        "publishing": (rotating, dkim_phase(rotating.config.dkim, PUBLISHING)),
        "switched": (rotating, dkim_phase(rotating.config.dkim, SWITCHED)),
        "withdrawn": (rotating, dkim_phase(rotating.config.dkim, WITHDRAWN)),
        "finished": (finished, dkim_phase(finished.config.dkim, WITHDRAWN)),
    }
    assert [p.phase for _, p in phases.values()] == ["scheduled", "publishing", "switched", "withdrawn", "steady"]
    signed: dict[str, dict[str, Signed]] = {}
    dns_of: dict[str, dict[str, bytes]] = {}
    key_files: dict[str, set[str]] = {}
    for name, (s, phase) in phases.items():
        host.apply(s, phase)
        dns_of[name] = published_txt(s, phase, host.pems)
        signed[name] = {d: host.sign(name, d) for d in host.domains}
        key_files[name] = {
            str(p.relative_to(host.root / "etc/dkimkeys")) for p in (host.root / "etc/dkimkeys").glob("*/*.private")
        }
        for d in host.domains:
            assert set(dns_of[name]) >= {f"{sel}._domainkey.{d}" for sel in phase.published}
            assert key_files[name] >= {f"{d}/{sel}.private" for sel in phase.published}

    for d in host.domains:
        # Which key OpenDKIM really signed with in each phase.
        assert {n: signed[n][d].selector for n in phases} == {
            "before": "s1",
            "publishing": "s1",
            "switched": "s2",
            "withdrawn": "s2",
            "finished": "s2",
        }
        # Before: only s1 is published, and it verifies.
        assert f"s2._domainkey.{d}" not in dns_of["before"]
        assert verifies(signed["before"][d].message, dns_of["before"])
        # During: both are published, so mail signed with s1 (before the switch) and with s2 (after)
        # both verify, whichever phase's DNS the receiver sees.
        for during in ("publishing", "switched"):
            for n in ("before", "publishing", "switched"):
                assert verifies(signed[n][d].message, dns_of[during]), (n, during)
        # After: s2 verifies, s1 is no longer published and its mail no longer verifies.
        for after in ("withdrawn", "finished"):
            assert f"s1._domainkey.{d}" not in dns_of[after]
            assert verifies(signed["switched"][d].message, dns_of[after])
            assert verifies(signed[after][d].message, dns_of[after])
            assert not verifies(signed["publishing"][d].message, dns_of[after])
        # The key files follow the published set: s2 appears with publishing, s1 goes when withdrawn.
        assert f"{d}/s2.private" not in key_files["before"]
        assert {f"{d}/s1.private", f"{d}/s2.private"} <= key_files["switched"]
        assert f"{d}/s1.private" not in key_files["withdrawn"] | key_files["finished"]
    # The same s2 key from publishing to finished: a message signed while switched still verifies
    # with the finished stack's record (checked above), and the key file never changed.
    assert (
        dns_of["switched"][f"s2._domainkey.{host.domains[0]}"] == dns_of["finished"][f"s2._domainkey.{host.domains[0]}"]
    )


def test_a_tampered_message_does_not_verify(host: Host) -> None:
    """The verifier is not a rubber stamp: the same signature over a changed body fails."""
    s = stack({"selector": "s2"})
    phase = dkim_phase(s.config.dkim, WITHDRAWN)
    host.apply(s, phase)
    d = host.domains[0]
    good = host.sign("tamper", d).message
    txt = published_txt(s, phase, host.pems)
    assert verifies(good, txt)
    assert not verifies(good.replace(b"Sent in the tamper phase.", b"Sent in the other phase."), txt)
