#!/usr/bin/python3
"""sams-passwd: a mailbox user changes their own password (installed by components/webmail).

One connection, one change, spoken as poppassd (what Roundcube's password plugin's `poppassd` driver
speaks; systemd starts one process per connection on loopback):

    200 sams-passwd ready          user alice@example.org
    200 your current password      pass <current>
    200 your new password          newpass <new>
    200 password changed           (or 500 <a sentence the user reads in the page>)

The current password is checked by Dovecot itself (its auth-client socket, the check IMAP makes), so
no hash is ever read here; the new one must pass the policy (sams_password_policy, the same file as
components/webmail/policy.py); Dovecot hashes it (`doveadm pw`, in the stack's scheme); the database
stores it through the role `sams_password`, which may only call sams_set_password(); Dovecot's cache
forgets the user at once, so the old password stops working now, not at the cache's TTL.
Passwords never reach a command line, a file or the log.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys

CONFIG = "/etc/sams/passwd.json"
ADDRESS = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}@[a-z0-9][a-z0-9.-]{0,252}$")
HASH = re.compile(r"^\{[A-Z0-9-]+\}[A-Za-z0-9./$=,+-]+$")
LINE_MAX = 1024
TIMEOUT_S = 20.0


def log(message: str) -> None:
    print(f"sams-passwd: {message}", file=sys.stderr, flush=True)


class Session:
    def __init__(self) -> None:
        self.sock = socket.socket(fileno=os.dup(0))
        self.sock.settimeout(TIMEOUT_S)
        self.reader = self.sock.makefile("rb")

    def say(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def ask(self, verb: str) -> str | None:
        """The argument of the client's next line if it is `<verb> <argument>`, else None."""
        raw = self.reader.readline(LINE_MAX + 1)
        if not raw or len(raw) > LINE_MAX or not raw.endswith(b"\n"):
            return None
        try:
            line = raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError:
            return None
        word, _, argument = line.partition(" ")
        return argument if word.lower() == verb else None


def dovecot_accepts(path: str, user: str, password: str) -> bool:
    """Dovecot's own verdict on the password (auth-client protocol 1.3, PLAIN)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(TIMEOUT_S)
        conn.connect(path)
        stream = conn.makefile("rwb")
        stream.write(f"VERSION\t1\t3\nCPID\t{os.getpid()}\n".encode())
        stream.flush()
        while True:  # the server's handshake ends with DONE
            line = stream.readline()
            if not line:
                raise OSError("Dovecot closed the auth connection during the handshake")
            if line.startswith(b"DONE"):
                break
        response = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
        # `secured`: loopback, no cleartext on any wire. No `no-penalty`: a wrong guess here is
        # delayed like one at IMAP.
        stream.write(f"AUTH\t1\tPLAIN\tservice=sams-passwd\tsecured\trip=127.0.0.1\tresp={response}\n".encode())
        stream.flush()
        answer = stream.readline().decode(errors="replace")
    return answer.startswith("OK\t1")


def dovecot_hash(scheme: str, password: str) -> str:
    """The hash in the form Dovecot verifies, made by Dovecot (it asks twice, on stdin)."""
    done = subprocess.run(
        ["doveadm", "pw", "-s", scheme],
        input=f"{password}\n{password}\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    hashed = done.stdout.strip()
    if done.returncode != 0 or not HASH.match(hashed) or not hashed.startswith("{" + scheme + "}"):
        raise RuntimeError(f"doveadm pw failed ({done.returncode}): {done.stderr.strip()}")
    return hashed


def store(psql: list[str], user: str, hashed: str) -> bool:
    """sams_set_password() through `psql` (the config's command: psql in the database container as the
    role that can do nothing else). Both values are checked above, so neither can leave its quotes;
    they travel on stdin, never on a command line."""
    assert ADDRESS.match(user) and HASH.match(hashed)
    sql = f"SELECT sams_set_password('{user}', '{hashed}');\n"
    done = subprocess.run(
        [*psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
        input=sql,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip() == "t"


def flush(user: str) -> None:
    done = subprocess.run(
        ["doveadm", "auth", "cache", "flush", user], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"doveadm auth cache flush failed ({done.returncode}): {done.stderr.strip()}")


def main() -> int:
    with open(CONFIG) as f:
        cfg = json.load(f)
    sys.path.insert(0, cfg["policy_dir"])
    from sams_password_policy import check  # the installed copy of components/webmail/policy.py

    s = Session()
    s.say("200 sams-passwd ready")
    user = (s.ask("user") or "").strip().lower()
    if not ADDRESS.match(user):
        s.say("500 Log in with your full e-mail address.")
        return 0
    s.say("200 your current password please")
    current = s.ask("pass")
    if current is None:
        s.say("500 The request was not understood.")
        return 0
    if not dovecot_accepts(cfg["dovecot_auth"], user, current):
        log(f"{user}: refused: the current password is not correct")
        s.say("500 The current password is not correct.")
        return 0
    s.say("200 your new password please")
    new = s.ask("newpass")
    if new is None:
        s.say("500 The request was not understood.")
        return 0
    refusal = check(new, address=user, current=current)
    if refusal is not None:
        log(f"{user}: refused: {refusal.message}")
        s.say(f"500 {refusal.message}")
        return 0
    try:
        if not store(cfg["psql"], user, dovecot_hash(cfg["scheme"], new)):
            log(f"{user}: refused: no active mailbox with a password")
            s.say("500 This mailbox cannot change its password here: ask your administrator.")
            return 0
        flush(user)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        log(f"{user}: failed: {exc}")
        s.say("500 The password could not be changed just now: try again in a few minutes.")
        return 1
    log(f"{user}: password changed")
    s.say("200 password changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
