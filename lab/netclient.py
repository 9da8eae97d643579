"""Protocol clients for lab tests and benchmarks, run inside a lab namespace.

`in_netns` forks a child that enters a network namespace (setns) and runs a function there with
plain values in and out; the clients below speak SMTP, IMAP and POP3 with Python's standard
library, verifying the host's certificate against the CA file they are given. They are what a
remote mail server, a phone or Gmail's fetcher does, in a few lines each.
"""

from __future__ import annotations

import base64
import ctypes
import email.message
import email.utils
import http.client
import http.cookies
import imaplib
import os
import pickle
import poplib
import re
import select
import signal
import smtplib
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


CLONE_NEWNET = 0x40000000


def in_netns(ns: str, hosts: dict[str, str], fn: Callable[..., T], *args: Any, timeout: float = 120) -> T:
    """fn(*args) in a forked child that has entered network namespace `ns`; its exception re-raised.

    `hosts` is the child's /etc/hosts (its resolver is this machine's, not the lab DNS): clients
    connect to the mail host by name, so SNI and certificate name checks are the real ones. The
    result (or exception) comes back pickled over a pipe.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_end)
            try:
                fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
                os.close(fd)
                _resolve_as(hosts)
                outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:
                outcome = (False, exc)
            try:
                data = pickle.dumps(outcome)
            except Exception:
                data = pickle.dumps((False, RuntimeError(repr(outcome[1]))))
            with os.fdopen(write_end, "wb") as fh:
                fh.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb") as fh:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fh], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"client in {ns} took more than {timeout} s")
            chunk = os.read(fh.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    ok, value = pickle.loads(b"".join(chunks))
    if not ok:
        raise value
    return value


def _resolve_as(hosts: dict[str, str]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *rest: Any, **kw: Any) -> Any:
        return real(hosts.get(host, host), *rest, **kw)

    socket.getaddrinfo = getaddrinfo


def tls_context(cafile: str) -> ssl.SSLContext:
    """Verify the host's certificate (from the lab's ACME CA) and its name, TLS 1.2 or newer."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def message(sender: str, to: str, subject: str, body: str = "hello\n", size: int = 0) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.split("@")[-1])
    if size:
        # Base64-like lines of printable filler: incompressible enough, no long lines.
        line = (uuid.uuid4().hex * 2)[:76] + "\n"
        body = body + line * (size // len(line))
    msg.set_content(body)
    return msg.as_bytes()


def submit(host: str, port: int, cafile: str, login: tuple[str, str], sender: str, to: list[str], data: bytes) -> str:
    """A mail client submitting: 587 with STARTTLS or 465 with implicit TLS, then AUTH; the queue id."""
    ctx = tls_context(cafile)
    client = (
        smtplib.SMTP_SSL(host, port, context=ctx, timeout=30, local_hostname="laptop.example")
        if port == 465
        else smtplib.SMTP(host, port, timeout=30, local_hostname="laptop.example")
    )
    with client:
        if port != 465:
            client.starttls(context=ctx)
        client.login(*login)
        client.mail(sender)
        for rcpt in to:
            code, text = client.rcpt(rcpt)
            if code != 250:
                raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
        code, text = client.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, text)
        return text.decode().rsplit(" ", 1)[-1]


Reply = tuple[int, str]


def dialogue(host: str, port: int, steps: list[tuple[str, str]], cafile: str = "") -> dict[str, Any]:
    """A raw SMTP dialogue (as an MTA on port 25 speaks it): EHLO, then each (verb, argument).

    Verb "starttls" upgrades with `cafile`; "data" sends the argument as the message. It stops at
    the first reply of 500 or more after MAIL; returns the EHLO keywords and every reply.
    """
    replies: list[Reply] = []
    with smtplib.SMTP(host, port, timeout=60, local_hostname="mx.sender.example") as client:
        client.ehlo()
        features = sorted(client.esmtp_features)
        for verb, arg in steps:
            if verb == "starttls":
                code, text = client.starttls(context=tls_context(cafile))
                client.ehlo()
                features = sorted(client.esmtp_features)
            elif verb == "data":
                code, text = client.data(arg.encode())
            else:
                code, text = client.docmd(verb, arg)
            replies.append((code, text.decode(errors="replace")))
    return {"features": features, "replies": replies}


def imap_read(host: str, cafile: str, login: tuple[str, str], marker: str, want: int, wait: float) -> list[bytes]:
    """IMAPS (993): the INBOX messages whose Subject has `marker`, polled until `want` arrived."""
    deadline = time.monotonic() + wait
    with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(cafile), timeout=30) as imap:
        imap.login(*login)
        while True:
            imap.select("INBOX")
            _, data = imap.search(None, "HEADER", "Subject", marker)
            numbers = data[0].split()
            if len(numbers) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        found = []
        for n in numbers:
            _, parts = imap.fetch(n, "(BODY.PEEK[])")
            found.append(bytes(parts[0][1]))  # type: ignore[index]
        return found


def pop3_read(host: str, cafile: str, login: tuple[str, str], marker: str) -> list[bytes]:
    """POP3S (995): every message whose Subject has `marker` (left on the server)."""
    pop = poplib.POP3_SSL(host, 995, context=tls_context(cafile), timeout=30)
    try:
        pop.user(login[0])
        pop.pass_(login[1])
        found = []
        for n in range(1, len(pop.list()[1]) + 1):
            lines = pop.retr(n)[1]
            raw = b"\r\n".join(lines)
            if marker.encode() in raw:
                found.append(raw)
        return found
    finally:
        pop.quit()


def imap_plaintext_login(host: str, login: tuple[str, str]) -> dict[str, Any]:
    """IMAP on 143 without STARTTLS: the capabilities, and what a LOGIN gets."""
    with imaplib.IMAP4(host, 143, timeout=30) as imap:
        caps = sorted(imap.capabilities)
        try:
            imap.login(*login)
            result = "logged in"
        except imaplib.IMAP4.error as exc:
            result = str(exc)
        return {"capabilities": caps, "login": result}


def banner(host: str, port: int) -> str:
    """The first line a server says; 'silent' (connected, no greeting), 'refused' or 'filtered'."""
    try:
        sock = socket.create_connection((host, port), timeout=3)
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "filtered"
    with sock:
        sock.settimeout(5)
        try:
            return sock.recv(200).decode(errors="replace").splitlines()[0]
        except (OSError, IndexError):
            return "silent"


def _transaction(client: smtplib.SMTP, sender: str, rcpt: str, data: bytes) -> Reply:
    """MAIL, RCPT, DATA: the first refusal (4xx/5xx), else the reply to the message's final dot."""
    for verb, arg in (("mail", f"FROM:<{sender}>"), ("rcpt", f"TO:<{rcpt}>"), ("data", "")):
        code, text = client.docmd(verb, arg)
        if code >= 400:
            return code, text.decode(errors="replace")
    client.send(smtplib.quotedata(data.decode()).encode() + b"\r\n.\r\n")
    code, text = client.getreply()
    return code, text.decode(errors="replace")


def mx_attempt(host: str, sender: str, rcpt: str, data: bytes) -> Reply:
    """One delivery attempt of a remote MTA on port 25: the first refusal (4xx/5xx), else the reply
    to the message's final dot."""
    with smtplib.SMTP(host, 25, timeout=60, local_hostname="mx.sender.example") as client:
        client.ehlo()
        return _transaction(client, sender, rcpt, data)


def submission_attempt(host: str, cafile: str, login: tuple[str, str], sender: str, rcpt: str, data: bytes) -> Reply:
    """A mail client on 587 (STARTTLS, AUTH): the first refusal from MAIL FROM on, else the reply to
    the message's final dot."""
    with smtplib.SMTP(host, 587, timeout=60, local_hostname="laptop.example") as client:
        client.starttls(context=tls_context(cafile))
        client.login(*login)
        return _transaction(client, sender, rcpt, data)


def submit_attempt(
    host: str, port: int, cafile: str, login: tuple[str, str], sender: str, to: list[str], data: bytes
) -> Reply:
    """submit(), answering the refusal (code, text) instead of raising it; (250, queue id) when taken."""
    try:
        return 250, submit(host, port, cafile, login, sender, to, data)
    except smtplib.SMTPRecipientsRefused as exc:
        ((code, text),) = exc.recipients.values()
        return code, text.decode(errors="replace")
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        return exc.smtp_code, error.decode(errors="replace") if isinstance(error, bytes) else error


def imap_login_from(host: str, context: ssl.SSLContext, source: str, user: str, password: str) -> bytes:
    """One IMAPS LOGIN from the internet address `source` (imaplib cannot choose it): the tagged reply."""
    raw = socket.create_connection((host, 993), timeout=30, source_address=(source, 0))
    with context.wrap_socket(raw, server_hostname=host) as tls, tls.makefile("rwb") as f:
        f.readline()
        f.write(f'a LOGIN {user} "{password}"\r\n'.encode())
        f.flush()
        line = f.readline()
        while line and not line.startswith(b"a "):  # untagged CAPABILITY lines come first; b"" if closed
            line = f.readline()
        return line


def imap_logins(host: str, cafile: str, source: str, logins: list[tuple[str, str]]) -> list[str]:
    """One IMAPS LOGIN per (user, password) from `source`, in turn: "ok" or "failed" for each."""
    context = tls_context(cafile)
    replies = [imap_login_from(host, context, source, *login) for login in logins]
    return ["ok" if reply.startswith(b"a OK") else "failed" for reply in replies]


def imap_count(host: str, cafile: str, logins: list[tuple[str, str]], marker: str) -> list[int]:
    """One IMAPS session per login, in turn: how many INBOX messages have `marker` in the Subject."""
    counts = []
    for login in logins:
        with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(cafile), timeout=30) as imap:
            imap.login(*login)
            imap.select("INBOX", readonly=True)
            _, data = imap.search(None, "HEADER", "Subject", marker)
            counts.append(len(data[0].split()))
    return counts


# --- the web: Roundcube's login form and DAV, as a browser and a phone send them ----------------------

# What a `forged` request claims to be in X-Forwarded-For (nginx must never pass it on).
FORGED_ADDRESS = "198.51.100.9"


def web_login(
    host: str, cafile: str, source: str | None, user: str, password: str, forged: bool = False
) -> tuple[str, float]:
    """One login through the form, with its own session and CSRF token as a browser sends it: "in"
    (Roundcube redirects to the mailbox) or "denied" (the form again), and the POST's seconds. A
    `forged` request also claims another address in X-Forwarded-For."""
    context = ssl.create_default_context(cafile=cafile)
    bind = (source, 0) if source else None
    conn = http.client.HTTPSConnection(host, 443, timeout=60, context=context, source_address=bind)
    try:
        conn.request("GET", "/")
        page = conn.getresponse()
        body = page.read().decode(errors="replace")
        cookies = http.cookies.SimpleCookie()
        for header in page.headers.get_all("Set-Cookie") or []:
            cookies.load(header)
        token = re.search(r'name="_token" value="([^"]+)"', body)
        assert token, body[:300]
        form = urllib.parse.urlencode(
            {"_token": token.group(1), "_task": "login", "_action": "login", "_timezone": "UTC",
             "_user": user, "_pass": password}
        )  # fmt: skip
        headers = {
            **({"X-Forwarded-For": FORGED_ADDRESS} if forged else {}),
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": "; ".join(f"{k}={v.value}" for k, v in cookies.items()),
        }
        started = time.monotonic()
        conn.request("POST", "/?_task=login", body=form, headers=headers)
        answer = conn.getresponse()
        text = answer.read().decode(errors="replace")
        took = time.monotonic() - started
    finally:
        conn.close()
    if answer.status == 302 and "_task=mail" in (answer.getheader("Location") or ""):
        return "in", took
    return ("denied" if answer.status in (200, 401) and 'name="_pass"' in text else str(answer.status)), took


def dav_login(
    host: str, cafile: str, source: str | None, user: str, password: str, forged: bool = False
) -> tuple[int, float]:
    """One PROPFIND on the user's own DAV collection with Basic auth, as a phone sends it: the status
    (207 in, 401 refused) and its seconds. A `forged` request also claims another address in
    X-Forwarded-For."""
    context = ssl.create_default_context(cafile=cafile)
    bind = (source, 0) if source else None
    conn = http.client.HTTPSConnection(host, 443, timeout=60, context=context, source_address=bind)
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
        "Depth": "0",
        **({"X-Forwarded-For": FORGED_ADDRESS} if forged else {}),
    }
    try:
        started = time.monotonic()
        conn.request("PROPFIND", f"/dav/{user}/", headers=headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status, time.monotonic() - started
    finally:
        conn.close()
