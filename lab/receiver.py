"""The independent receiver: another mail domain's MX on the lab's internet, judging what SAMS sends.

A second address in ``sams-inet`` (198.18.0.20, ``mx.receiver.example``: the MX of
``receiver.example`` in the lab DNS) runs an SMTP server (aiosmtpd) that accepts every message for
its domain and does what a receiving MTA's milters do, with the stock libraries and only the lab
DNS to ask: SPF of the client address against MAIL FROM (pyspf), every DKIM-Signature (dkimpy),
then DMARC (the From domain's policy fetched and parsed by checkdmarc; alignment per RFC 7489
section 3.1, relaxed or strict as the policy says). It writes an ``Authentication-Results`` header
(RFC 8601) on top of the message and keeps it as ``run/receiver/new/<time>-<id>.eml``.

It has nothing of SAMS in it: what it says depends only on the message, the client and the DNS.

``python -m lab.receiver --listen ADDR --name NAME --dns SERVER --spool DIR`` runs it (in the
namespace it is started in); :func:`start` / :func:`stop` run it for the lab.
"""

from __future__ import annotations

import argparse
import email.utils
import logging
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.proc import daemon_pid, run, start_lab_module, stop_daemon
from lab.spec import NAMES, LabSpec, StatePaths

log = logging.getLogger("lab.receiver")


# --- pure: DMARC and the header -----------------------------------------------------------------


@dataclass(frozen=True)
class Verdicts:
    spf: str  # pass, fail, softfail, neutral, none, temperror, permerror
    mail_from_domain: str
    helo: str
    dkim: tuple[tuple[str, str, str], ...]  # (result, d=, s=) per signature
    dmarc: str  # pass, fail, none, permerror
    dmarc_policy: str
    from_domain: str


def aligned(a: str, b: str, mode: str, org: Callable[[str], str]) -> bool:
    """RFC 7489 3.1: strict means the same name; relaxed, the same organizational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if mode == "s" else org(a) == org(b)


def dmarc_result(
    from_domain: str,
    spf: str,
    mail_from_domain: str,
    dkim: Sequence[tuple[str, str, str]],
    tags: dict[str, str] | None,
    org: Callable[[str], str],
) -> str:
    """pass if an SPF pass or a DKIM pass is aligned with the From domain; none without a policy."""
    if tags is None:
        return "none"
    spf_ok = spf == "pass" and aligned(mail_from_domain, from_domain, tags.get("aspf", "r"), org)
    dkim_ok = any(r == "pass" and aligned(d, from_domain, tags.get("adkim", "r"), org) for r, d, _ in dkim)
    return "pass" if spf_ok or dkim_ok else "fail"


def authentication_results(authserv_id: str, v: Verdicts) -> str:
    """The RFC 8601 header value."""
    parts = [authserv_id, f"spf={v.spf} smtp.mailfrom={v.mail_from_domain or v.helo} smtp.helo={v.helo}"]
    parts += [f"dkim={r} header.d={d} header.s={s}" for r, d, s in v.dkim] or ["dkim=none"]
    parts.append(f"dmarc={v.dmarc} (p={v.dmarc_policy or 'none'}) header.from={v.from_domain}")
    return ";\r\n\t".join(parts)


# --- the checks, with the libraries a receiver uses --------------------------------------------------


def use_nameserver(server: str) -> None:
    """Every library here resolves through dnspython's default resolver: point it at `server` only."""
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.lifetime = 5.0
    dns.resolver.default_resolver = resolver


def check(message: bytes, client_ip: str, helo: str, mail_from: str, server: str) -> Verdicts:
    import email

    import dkim
    import spf
    from checkdmarc.dmarc import DMARCRecordNotFound, get_dmarc_record
    from checkdmarc.utils import get_base_domain

    spf_result, _ = spf.check2(i=client_ip, s=mail_from or f"postmaster@{helo}", h=helo)
    headers = email.message_from_bytes(message)
    signatures = []
    for index, _ in enumerate(headers.get_all("DKIM-Signature") or []):
        verifier = dkim.DKIM(message)
        try:
            ok = verifier.verify(idx=index)
        except dkim.DKIMException:
            ok = False
        d = (verifier.domain or b"").decode()
        s = (verifier.selector or b"").decode()
        signatures.append(("pass" if ok else "fail", d, s))
    from_domain = email.utils.parseaddr(headers.get("From", ""))[1].rpartition("@")[2].lower()
    mail_from_domain = mail_from.rpartition("@")[2].lower()
    tags: dict[str, str] | None = None
    try:
        record: Any = get_dmarc_record(from_domain, nameservers=[server], timeout=5)
        tags = {k: str(v["value"]) for k, v in record["parsed"]["tags"].items()}
        verdict = dmarc_result(from_domain, spf_result, mail_from_domain, signatures, tags, get_base_domain)
    except DMARCRecordNotFound:
        verdict = "none"
    except Exception as exc:  # a broken record: what a receiver calls permerror
        log.warning("DMARC of %s: %s", from_domain, exc)
        verdict = "permerror"
    return Verdicts(
        spf_result, mail_from_domain, helo, tuple(signatures), verdict, (tags or {}).get("p", ""), from_domain
    )


# --- the server ------------------------------------------------------------------------------------


class Handler:
    def __init__(self, name: str, server: str, spool: Path, domains: Sequence[str]) -> None:
        self.name, self.server, self.spool, self.domains = name, server, spool, domains

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.rpartition("@")[2].lower() not in self.domains:
            return "550 5.7.1 relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        ip, helo = session.peer[0], session.host_name or ""
        verdicts = check(content, ip, helo, envelope.mail_from or "", self.server)
        stamp = email.utils.formatdate()
        top = (
            f"Authentication-Results: {authentication_results(self.name, verdicts)}\r\n"
            f"Received: from {helo} ([{ip}]) by {self.name} with ESMTP for <{envelope.rcpt_tos[0]}>; {stamp}\r\n"
        )
        new = self.spool / "new"
        tmp = self.spool / "tmp" / f"{time.time():.6f}-{uuid.uuid4().hex[:8]}.eml"
        tmp.write_bytes(top.encode() + content)
        tmp.rename(new / tmp.name)
        log.info("from %s [%s] %s -> %s: %s", helo, ip, envelope.mail_from, envelope.rcpt_tos, verdicts)
        return "250 2.0.0 OK queued as " + tmp.stem


def serve(listen: str, name: str, server: str, spool: Path, domains: Sequence[str]) -> None:
    from aiosmtpd.controller import Controller

    use_nameserver(server)
    for sub in ("new", "tmp"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    controller = Controller(
        Handler(name, server, spool, domains), hostname=listen, port=25, server_hostname=name, ready_timeout=10
    )
    controller.start()
    log.info("receiver %s listening on %s:25", name, listen)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.receiver", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--name", required=True, help="its host name (banner, Authentication-Results)")
    parser.add_argument("--dns", required=True, help="the only nameserver it asks")
    parser.add_argument("--spool", required=True, type=Path)
    parser.add_argument("--domain", action="append", required=True, help="a domain it accepts mail for")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    serve(args.listen, args.name, args.dns, args.spool, [d.lower() for d in args.domain])
    return 0


# --- shell: start and stop for the lab -----------------------------------------------------------------


def directory(paths: StatePaths) -> Path:
    return paths.run / "receiver"


def spool(paths: StatePaths) -> Path:
    """Where received messages land (new/*.eml)."""
    return directory(paths) / "spool"


def start(spec: LabSpec, paths: StatePaths, *, name: str, domain: str, timeout: float = 20.0) -> int | None:
    """Give sams-inet the receiver's address (kept if a stopped receiver left it) and start the
    receiver there; wait for its banner."""
    if not spec.receiver_ipv4:
        return None
    address = f"{spec.receiver_ipv4}/{spec.public_prefix}"
    run(["ip", "-n", NAMES.ns_inet, "addr", "replace", address, "dev", NAMES.bridge])
    args = ["--listen", spec.receiver_ipv4, "--name", name, "--dns", spec.inet_ipv4]
    args += ["--spool", str(spool(paths)), "--domain", domain]
    pid = start_lab_module(NAMES.ns_inet, "receiver", args, directory(paths), timeout)
    log.info("receiver %s (pid %d) at %s:25", name, pid, spec.receiver_ipv4)
    return pid


def running(paths: StatePaths) -> int | None:
    """The receiver's pid if it runs."""
    return daemon_pid(directory(paths) / "receiver.pid", b"lab.receiver")


def stop(paths: StatePaths) -> list[str]:
    return stop_daemon(running(paths), "receiver")


if __name__ == "__main__":
    sys.exit(main())
