"""A smarthost on the lab's internet: what a mail provider's relay looks like to SAMS's Postfix
when sams:relay is set (providers that block outbound port 25 leave no other way out).

aiosmtpd in ``sams-inet`` on port 587 (STARTTLS) or 465 (implicit TLS), as ``smtp.lab.example``
(lab/dns.py), with the certificate and key it is given (the lab's ACME server CA issues one the
host trusts, as a public CA would) or, without them, one it signs itself. Like a real relay it takes
mail only after TLS and AUTH with its one login, for any recipient, and keeps each message as
``<spool>/<time>-<id>.eml`` with the login and the TLS version it arrived with on top
(``X-Smarthost-Login``, ``X-Smarthost-TLS``), and every login it was offered in ``auth-attempts``.
It has nothing of SAMS in it.

``python -m lab.smarthost --listen ADDR --port 587 --login USER --password-file F --spool DIR
[--cert F --key F]`` runs it in the namespace it is started in; :func:`start` / :func:`stop` run it
for a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import ssl
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.dns import SMARTHOST as NAME
from lab.proc import daemon_pid, start_lab_module, stop_daemon
from lab.spec import NAMES


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for NAME, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Handler:
    def __init__(self, spool: Path) -> None:
        self.spool = spool

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        tls = server.transport.get_extra_info("ssl_object")
        login = session.auth_data.login.decode() if session.auth_data else ""
        top = (
            f"X-Smarthost-Login: {login}\r\n"
            f"X-Smarthost-TLS: {tls.version() if tls else 'none'}\r\n"
            f"X-Smarthost-Envelope: {envelope.mail_from} -> {','.join(envelope.rcpt_tos)}\r\n"
        )
        tmp = self.spool / "tmp" / f"{time.time():.6f}-{uuid.uuid4().hex[:8]}.eml"
        tmp.write_bytes(top.encode() + (envelope.original_content or envelope.content))
        tmp.rename(self.spool / tmp.name)
        return "250 2.0.0 OK relayed as " + tmp.stem


def serve(listen: str, port: int, login: str, password: str, spool: Path, pair: tuple[Path, Path] | None) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    cert, key = pair or self_signed(Path(tempfile.mkdtemp(prefix="smarthost-")))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    attempts = spool.parent / "auth-attempts"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (login.encode(), password.encode())
        with attempts.open("a") as log:  # every login tried, so a test can tell none was
            log.write(f"{mechanism} {'ok' if ok else 'refused'}\n")
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    implicit = port == 465
    smtp_args: dict[str, Any] = {
        "authenticator": authenticator,
        "auth_required": True,
        # aiosmtpd counts only STARTTLS as TLS here and would hide AUTH on 465, where the whole
        # session is TLS already.
        "auth_require_tls": not implicit,
        "server_hostname": NAME,
    }
    if not implicit:
        smtp_args |= {"tls_context": tls, "require_starttls": True}
    controller = Controller(
        Handler(spool), hostname=listen, port=port, ssl_context=tls if implicit else None, ready_timeout=10, **smtp_args
    )
    controller.start()
    print(f"smarthost {NAME} listening on {listen}:{port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.smarthost", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, required=True, help="465: implicit TLS; any other: STARTTLS")
    parser.add_argument("--login", required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--cert", type=Path, help="certificate (PEM); with --key, else self-signed")
    parser.add_argument("--key", type=Path)
    args = parser.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    pair = (args.cert, args.key) if args.cert and args.key else None
    serve(args.listen, args.port, args.login, args.password_file.read_text().strip(), args.spool, pair)
    return 0


# --- shell: start and stop for a test ------------------------------------------------------------------


@dataclass(frozen=True)
class Smarthost:
    pid: int
    directory: Path

    @property
    def spool(self) -> Path:
        return self.directory / "spool"

    def received(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.spool.glob("*.eml"))]

    def logins_tried(self) -> list[str]:
        """Each AUTH it was offered: "<mechanism> ok|refused"."""
        attempts = self.directory / "auth-attempts"
        return attempts.read_text().splitlines() if attempts.exists() else []


def start(
    directory: Path,
    listen: str,
    port: int,
    login: str,
    password: str,
    pair: tuple[Path, Path] | None = None,
    timeout: float = 20.0,
) -> Smarthost:
    """Start the smarthost in sams-inet on listen:port (with this certificate and key, else a
    self-signed pair); wait until it listens."""
    directory.mkdir(parents=True, exist_ok=True)
    secret = directory / "password"
    secret.write_text(password)
    secret.chmod(0o600)
    args = ["--listen", listen, "--port", str(port), "--login", login]
    args += ["--password-file", str(secret), "--spool", str(directory / "spool")]
    if pair:
        args += ["--cert", str(pair[0]), "--key", str(pair[1])]
    return Smarthost(start_lab_module(NAMES.ns_inet, "smarthost", args, directory, timeout), directory)


def stop(host: Smarthost) -> list[str]:
    return stop_daemon(daemon_pid(host.directory / "smarthost.pid", b"lab.smarthost"), "smarthost")


if __name__ == "__main__":
    sys.exit(main())
