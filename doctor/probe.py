"""The probing shell: gathers Observations for the pure checks (doctor/checks.py).

Run it from OUTSIDE the host (a laptop, a CI runner; in the lab the `sams-inet` namespace): DNS
through the resolver given, TCP connections, TLS handshakes and an SMTP dialogue against the
host's public address; host facts (disk, memory, backups, outbound 25) over SSH, by shipping
doctor/hostscript.py to the host's python3.
"""

from __future__ import annotations

import json
import shlex
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import BinaryIO

from components.backup.plan import STATUS_FILE
from components.database.steps import DATA_DIR
from components.dns.records import normal
from components.hostpaths import CLAMAV_DB_DIR, CLAMAV_DB_FORMS, CLAMD_SOCKET
from doctor.checks import reverse_name
from doctor.model import (
    DnsAnswer,
    Expected,
    Observations,
    PortSpec,
    PortState,
    RecordKind,
    SmtpProbe,
    TlsEndpoint,
    TlsProbe,
    host_facts,
)

HOST_SCRIPT = Path(__file__).with_name("hostscript.py")
# Where an outside MX is tried from the host when no relay is configured: Gmail's, as good a
# stand-in for "the rest of the world" as any, and what most mail goes to.
DEFAULT_OUTBOUND = "gmail-smtp-in.l.google.com"
# A foreign domain for the open-relay probe (RCPT only; no message is ever sent).
DEFAULT_RELAY_RCPT = "relay-test@example.com"


@dataclass(frozen=True)
class ProbeOptions:
    address: str  # the host's public address to probe (usually Expected.ipv4)
    resolver: str | None = None  # a DNS server's address; None: the system's resolver
    cafile: str | None = None  # trust these CAs instead of the system's
    helo: str = "doctor.invalid"  # the name the probe greets port 25 with
    relay_rcpt: str = DEFAULT_RELAY_RCPT
    outbound_target: str = DEFAULT_OUTBOUND
    timeout: float = 5.0


# --- DNS ----------------------------------------------------------------------------------------------


def lookup(name: str, kind: RecordKind, resolver: str | None, timeout: float) -> DnsAnswer:
    import dns.exception
    import dns.resolver

    res = dns.resolver.Resolver(configure=resolver is None)
    if resolver:
        res.nameservers = [resolver]
    res.lifetime = timeout
    try:
        answer = res.resolve(name, kind, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return DnsAnswer(name, kind, "nxdomain")
    except (dns.exception.DNSException, OSError) as exc:
        return DnsAnswer(name, kind, "error", error=f"{type(exc).__name__}: {exc}")
    if answer.rrset is None:
        return DnsAnswer(name, kind, "nodata")
    # A CNAME chain answers an A query with the target's address: keep only the asked type.
    # Compared with the plan in the one normal form of components/dns/records.py.
    values = tuple(sorted(normal(r) for r in answer.rrset))
    return DnsAnswer(name, kind, "ok", values)


def dns_queries(expected: Expected) -> list[tuple[str, RecordKind]]:
    queries: list[tuple[str, RecordKind]] = [(r.name, r.type) for r in expected.records]
    queries += [(reverse_name(a), "PTR") for a in (expected.ipv4, expected.ipv6) if a]
    return list(dict.fromkeys(queries))


# --- TCP, TLS, SMTP -----------------------------------------------------------------------------------


def tcp_state(address: str, port: PortSpec, timeout: float) -> PortState:
    if port.proto == "udp":
        return PortState(
            port.number,
            "udp",
            "unprobed",
            "a UDP service that does not answer strangers "
            "(WireGuard stays silent without a valid handshake) cannot be probed from outside",
        )
    try:
        with socket.create_connection((address, port.number), timeout=timeout):
            return PortState(port.number, "tcp", "open")
    except ConnectionRefusedError:
        return PortState(port.number, "tcp", "closed", "connection refused")
    except TimeoutError:
        return PortState(port.number, "tcp", "filtered", f"no answer in {timeout:.0f} s")
    except OSError as exc:
        return PortState(port.number, "tcp", "filtered", str(exc))


def _read_reply(f: BinaryIO) -> tuple[int, str]:
    lines = []
    while True:
        line = f.readline(1024).decode(errors="replace")
        if not line:
            raise ConnectionError("the server closed the connection")
        lines.append(line[4:].strip())
        if line[3:4] != "-":
            return int(line[:3]), "\n".join(lines)


def _starttls(sock: socket.socket, helo: str) -> None:
    """The plaintext part of SMTP up to STARTTLS's 220, on a raw socket."""
    f = sock.makefile("rb")
    for command, want in ((None, 220), (f"EHLO {helo}", 250), ("STARTTLS", 220)):
        if command:
            sock.sendall(command.encode() + b"\r\n")
        code, text = _read_reply(f)
        if code != want:
            raise ConnectionError(f"{command or 'greeting'} got {code} {text}")


def _connect_tls(address: str, ep: TlsEndpoint, name: str, ctx: ssl.SSLContext, opts: ProbeOptions) -> ssl.SSLSocket:
    # postscreen holds back port 25's greeting for a few seconds the first time a client comes.
    timeout = opts.timeout * 4 if ep.mode == "smtp-starttls" else opts.timeout
    sock = socket.create_connection((address, ep.port), timeout=timeout)
    try:
        if ep.mode == "smtp-starttls":
            _starttls(sock, opts.helo)
        return ctx.wrap_socket(sock, server_hostname=name)
    except BaseException:
        sock.close()
        raise


def _certificate(der: bytes) -> dict[str, object]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    try:
        names = tuple(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        names = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return {
        "not_after": cert.not_valid_after_utc.astimezone(UTC),
        "names": tuple(n.lower() for n in names),
        "self_signed": cert.issuer == cert.subject,
    }


def tls_probe(ep: TlsEndpoint, hostname: str, opts: ProbeOptions) -> TlsProbe:
    """One handshake verifying chain and name; when that fails, one more without, to read the certificate."""
    verify = ssl.create_default_context(cafile=opts.cafile) if opts.cafile else ssl.create_default_context()
    verify.minimum_version = ssl.TLSVersion.TLSv1_2
    verified, verify_error = True, ""
    try:
        tls = _connect_tls(opts.address, ep, hostname, verify, opts)
    except ssl.SSLCertVerificationError as exc:
        verified, verify_error = False, exc.verify_message or str(exc)
    except (OSError, ConnectionError) as exc:
        return TlsProbe(ep.port, ep.mode, connected=False, error=f"{type(exc).__name__}: {exc}")
    if not verified:
        plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        plain.check_hostname, plain.verify_mode = False, ssl.CERT_NONE
        plain.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            tls = _connect_tls(opts.address, ep, hostname, plain, opts)
        except (OSError, ConnectionError) as exc:
            return TlsProbe(ep.port, ep.mode, True, error=f"{type(exc).__name__}: {exc}", verify_error=verify_error)
    with tls:
        der = tls.getpeercert(binary_form=True)
        version = tls.version() or ""
    cert = _certificate(der) if der else {}
    return TlsProbe(ep.port, ep.mode, True, verified=verified, verify_error=verify_error, version=version, **cert)  # type: ignore[arg-type]


def smtp_probe(hostname: str, opts: ProbeOptions) -> SmtpProbe:
    """Port 25 as a stranger: greeting, EHLO, then MAIL FROM:<> and RCPT to a foreign domain (never DATA)."""
    try:
        client = smtplib.SMTP(timeout=opts.timeout * 4, local_hostname=opts.helo)
        code, banner = client.connect(opts.address, 25)
    except (OSError, smtplib.SMTPException) as exc:
        return SmtpProbe(False, f"{type(exc).__name__}: {exc}")
    try:
        ehlo_code, ehlo = client.ehlo()
        if code != 220 or ehlo_code != 250:
            return SmtpProbe(True, f"greeting {code}, EHLO {ehlo_code}", banner.decode(errors="replace"))
        client.mail("")
        rcpt = client.rcpt(opts.relay_rcpt)
        client.rset()
        return SmtpProbe(
            True,
            banner=banner.decode(errors="replace"),
            ehlo=ehlo.decode(errors="replace").splitlines()[0],
            relay_rcpt=opts.relay_rcpt,
            relay_reply=(rcpt[0], rcpt[1].decode(errors="replace")),
        )
    except (OSError, smtplib.SMTPException) as exc:
        return SmtpProbe(True, f"{type(exc).__name__}: {exc}", banner.decode(errors="replace"))
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


# --- the host, over SSH ----------------------------------------------------------------------------------

# Where PostgreSQL (its data directory mounted from the host) marks segments waiting to be archived.
WAL_STATUS = f"{DATA_DIR}/pg_wal/archive_status"
# Where freshclam keeps the daily signatures, in each form it writes (and Debian's units accept).
CLAMAV_DAILY = tuple(f"{CLAMAV_DB_DIR}/daily.{form}" for form in CLAMAV_DB_FORMS)

# Runs `argv` on the host with `stdin`, returns stdout (raises on failure).
HostRunner = Callable[[Sequence[str], str], str]


def host_script_args(expected: Expected, opts: ProbeOptions) -> list[str]:
    target = [expected.relay[0], expected.relay[1]] if expected.relay else [opts.outbound_target, 25]
    args: dict[str, object] = {
        "paths": ["/", expected.mail_root],
        "backup_status": STATUS_FILE,
        "wal_status": WAL_STATUS,
        "outbound": [target],
        "clamav": {"socket": CLAMD_SOCKET, "daily": list(CLAMAV_DAILY)} if expected.antivirus else None,
    }
    # As root: the backup status record, the mail root and PostgreSQL's data need not be readable by the admin user.
    return ["sudo", "-n", "python3", "-", json.dumps(args)]


def ssh_runner(destination: str) -> HostRunner:
    """`ssh DEST` with the user's own SSH config (e.g. sams@10.100.0.2 through the tunnel)."""

    def run(argv: Sequence[str], stdin: str) -> str:
        cmd = ["ssh", "-o", "BatchMode=yes", destination, shlex.join(argv)]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"`{shlex.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    return run


def gather_host(expected: Expected, opts: ProbeOptions, runner: HostRunner) -> dict[str, object]:
    """The host's facts as JSON data (doctor/hostscript.py's output)."""
    out = runner(host_script_args(expected, opts), HOST_SCRIPT.read_text())
    data: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return data


# --- everything ------------------------------------------------------------------------------------------


def observe(
    expected: Expected, opts: ProbeOptions, host: dict[str, object] | None = None, host_error: str = ""
) -> Observations:
    """Probe everything from here, in parallel; `host`: facts gathered already (gather_host)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        dns = [pool.submit(lookup, n, k, opts.resolver, opts.timeout) for n, k in dns_queries(expected)]
        ports = [
            pool.submit(tcp_state, opts.address, p, opts.timeout)
            for p in (*expected.public_ports, *expected.private_ports)
        ]
        tls = [pool.submit(tls_probe, ep, expected.hostname, opts) for ep in expected.tls]
        smtp = pool.submit(smtp_probe, expected.hostname, opts)
        return Observations(
            dns=tuple(f.result() for f in dns),
            ports=tuple(f.result() for f in ports),
            tls=tuple(f.result() for f in tls),
            smtp=smtp.result(),
            host=host_facts(host) if host is not None else None,
            host_error=host_error,
        )
