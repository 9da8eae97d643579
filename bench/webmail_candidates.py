"""Memory and login time of the webmail candidates for issue 23 item 1, measured in a trixie chroot.

    sudo .venv/bin/python -m bench.webmail_candidates [--quiet SECONDS] [--sessions N] [--no-record]

Builds (or reuses) bench.webmail_tree's tree: Debian 13 with the mail daemons, PostgreSQL 17, and
Roundcube 1.6 on PHP-FPM, SOGo 5.12, memcached and Radicale 3.5 from Debian. In an overlay of it it
starts, directly (no systemd in a chroot), the parts the host already has: Dovecot 2.4 (IMAP on
127.0.0.1 only, a passwd-file with ten users whose INBOXes hold 30 messages each), PostgreSQL 17 and
nginx. Then one candidate at a time:

- A: Roundcube 1.6 on PHP-FPM (pm = ondemand), its tables in that PostgreSQL;
- B: SOGo 5.12 (sogod, 3 workers) with memcached, its tables in that PostgreSQL;
- Radicale 3.5 (the CalDAV/CardDAV server paired with Roundcube), authenticating against Dovecot.

For each: the PSS of its own processes (sum of /proc/<pid>/smaps_rollup Pss) after `--quiet`
seconds idle; then `--sessions` real logins, run concurrently (Roundcube: the login form with its
CSRF token, then the inbox page and its message list; SOGo: POST /SOGo/connect, then the mail view
and the INBOX's message list; Radicale: PROPFIND, MKCALENDAR, PUT and GET of an event), each
checked to have reached the user's own data (30 messages, the event), with the time from the
login POST to the inbox's message list; the PSS right after them and again 15 s later. The shared
daemons' PSS (Dovecot, PostgreSQL, nginx) is printed beside, not added to a candidate's figure.
Every daemon listens on 127.0.0.1, ports 18000-18999; every wait is bounded.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.cookiejar
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.mail_path import pss_kib
from bench.record import record
from bench.webmail_tree import ensure_webmail_tree, versions
from components.users.hashing import sha512_crypt
from lab import trixie_chroot

DOMAIN = "example.org"
USERS = tuple(f"user{n:02d}@{DOMAIN}" for n in range(1, 11))
MESSAGES = 30  # per INBOX
READ = 3  # messages each session opens after the list
IMAP_PORT = 18143
PG_PORT = 18432
ROUNDCUBE_PORT = 18080
SOGO_WEB_PORT = 18081
SOGOD_PORT = 18020
MEMCACHED_PORT = 18211
RADICALE_PORT = 18232
VMAIL_UID = 5000
DEADLINE = 60.0  # seconds, for any one daemon to answer or any one request
SOGO_WORKERS = 3
FPM_MAX_CHILDREN = 4


# --- configuration files (each non-default setting says why) ---------------------------------------------


def dovecot_conf() -> str:
    return f"""\
# Bench only: the host's Dovecot (components/mail) is the real one; this stands in for it.
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
# IMAP alone: the webmail candidates speak nothing else to Dovecot.
protocols = imap
# Loopback only, on a bench port (the machine's own 143 is not ours).
listen = 127.0.0.1
# Bench only: plain IMAP on loopback, so the login's cost is the webmail's, not TLS's.
ssl = no
# Needed with ssl = no; the host's Dovecot refuses cleartext logins off loopback.
auth_allow_cleartext = yes
# Maildir under each user's home, as the host's Dovecot stores mail.
mail_driver = maildir
mail_path = ~/Maildir
# Logs to stderr, which the bench keeps in a file.
log_path = /dev/stderr

# Bench users in a file (the host's Dovecot reads PostgreSQL): login, {{SHA512-CRYPT}} hash, uid, home.
passdb passwd-file {{
  passwd_file_path = /etc/dovecot/bench-users
}}
userdb passwd-file {{
  passwd_file_path = /etc/dovecot/bench-users
}}

service imap-login {{
  inet_listener imap {{
    port = {IMAP_PORT}
  }}
  # No IMAPS listener: TLS is off on the bench (above).
  inet_listener imaps {{
    port = 0
  }}
}}
service auth {{
  # Radicale's Dovecot-auth attempts (type = dovecot, the plugin) connect here as user radicale.
  unix_listener auth-client {{
    user = radicale
    mode = 0600
  }}
}}
"""


def dovecot_users(passwords: dict[str, str]) -> str:
    lines = []
    for user in USERS:
        local = user.split("@")[0]
        home = f"/var/mail/vhosts/{DOMAIN}/{local}"
        lines.append(f"{user}:{{SHA512-CRYPT}}{sha512_crypt(passwords[user])}:{VMAIL_UID}:{VMAIL_UID}::{home}::")
    return "\n".join(lines) + "\n"


def message(user: str, n: int) -> bytes:
    return (
        f"From: Sender {n} <sender{n}@example.net>\r\n"
        f"To: {user}\r\n"
        f"Subject: Bench message {n} for the webmail candidates\r\n"
        f"Date: Mon, 07 Dec 2026 10:{n:02d}:00 +0000\r\n"
        f"Message-ID: <bench-{n}-{user}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + f"Body of message {n}.\r\n" * 20
    ).encode()


def postgresql_hba() -> str:
    return """\
# Bench only: the superuser over the socket, the candidates' roles by password on loopback.
local all postgres peer
host all all 127.0.0.1/32 scram-sha-256
"""


def roundcube_config(db_password: str) -> str:
    des_key = secrets.token_urlsafe(18)[:24]
    return f"""<?php
// Written by bench.webmail_candidates: a minimal Roundcube against the bench's Dovecot.
$config = [];
// Its tables in the PostgreSQL the host already runs (no SQLite file to back up apart from it).
$config['db_dsnw'] = 'pgsql://roundcube:{db_password}@127.0.0.1:{PG_PORT}/roundcube';
// The bench's Dovecot; on the host, the host's own over TLS.
$config['imap_host'] = '127.0.0.1:{IMAP_PORT}';
// Not exercised here (no mail is sent); on the host, submission on 587 with the login's password.
$config['smtp_host'] = '127.0.0.1:18587';
// Submission logs in as the user, with the password of the session (Debian's sample).
$config['smtp_user'] = '%u';
$config['smtp_pass'] = '%p';
// No support link on the login page.
$config['support_url'] = '';
// The name on the login page and in the title.
$config['product_name'] = 'SAMS webmail';
// Encrypts the IMAP password kept in the session; per install, never the packaged sample.
$config['des_key'] = '{des_key}';
// None: the bench measures Roundcube itself (the password plugin loads only in Settings).
$config['plugins'] = [];
$config['skin'] = 'elastic';
// No spell-check service to call out to.
$config['enable_spellcheck'] = false;
"""


def php_fpm_pool() -> str:
    return f"""\
; Written by bench.webmail_candidates: Roundcube's pool as SAMS would size it for a 1 GiB host.
[roundcube]
user = www-data
group = www-data
; A socket of Roundcube's own, replacing Debian's www pool (removed), that only nginx (www-data) opens.
listen = /run/php/roundcube.sock
listen.owner = www-data
listen.group = www-data
; ondemand: no worker exists until a request comes, and each exits after
; pm.process_idle_timeout (10 s, the default) idle: a webmail used a few times a day holds
; only the master between uses, where dynamic/static would keep workers resident.
pm = ondemand
; At most {FPM_MAX_CHILDREN} PHP workers: Roundcube's requests are short, a page fires at most a few in
; parallel, and the cap bounds the pool's memory on a 1 GiB host (see docs/webmail_choice.md).
pm.max_children = {FPM_MAX_CHILDREN}
; Recycle a worker after 500 requests, so a leak in a PHP extension cannot grow it forever.
pm.max_requests = 500
"""


def php_fpm_conf() -> str:
    return """\
; Written by bench.webmail_candidates.
; Debian's php-fpm.conf without its comments, so the bench owns the whole file.
[global]
pid = /run/php/php8.4-fpm.pid
error_log = /var/log/php8.4-fpm.log
include = /etc/php/8.4/fpm/pool.d/*.conf
"""


def nginx_conf() -> str:
    return f"""\
# Written by bench.webmail_candidates; on the host the existing nginx serves these locations.
user www-data;
# One worker is plenty for a handful of users; each more costs memory.
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
events {{
  # Ten sessions and their proxied connections need far fewer than Debian's 768.
  worker_connections 256;
}}
http {{
  include /etc/nginx/mime.types;
  # The bench reads no access log; writing it would only cost time per request.
  access_log off;
  # Roundcube's attachments; its own default limit is what PHP allows.
  client_max_body_size 25m;

  server {{
    listen 127.0.0.1:{ROUNDCUBE_PORT};
    root /var/lib/roundcube/public_html;
    index index.php;
    location ~ \\.php$ {{
      include fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_pass unix:/run/php/roundcube.sock;
    }}
  }}

  server {{
    listen 127.0.0.1:{SOGO_WEB_PORT};
    # SOGo lives under /SOGo; the bare host name leads there.
    location = / {{
      return 302 /SOGo/;
    }}
    location ^~ /SOGo {{
      proxy_pass http://127.0.0.1:{SOGOD_PORT};
      # SOGo builds its URLs from these (what Debian's sample apache.conf sets).
      proxy_set_header x-webobjects-server-protocol HTTP/1.0;
      proxy_set_header x-webobjects-remote-host $remote_addr;
      proxy_set_header x-webobjects-server-name $host;
      proxy_set_header x-webobjects-server-port $server_port;
      proxy_set_header x-webobjects-server-url http://$host:$server_port;
      proxy_set_header Host $host:$server_port;
      # sogod's answers to a big folder can take longer than nginx's 60 s default.
      proxy_read_timeout 120s;
    }}
    # Static files straight from the package, not through sogod (as Debian's apache.conf does).
    location /SOGo.woa/WebServerResources/ {{
      alias /usr/lib/x86_64-linux-gnu/GNUstep/SOGo/WebServerResources/;
    }}
  }}
}}
"""


def sogo_conf(db_password: str) -> str:
    db = f"postgresql://sogo:{db_password}@127.0.0.1:{PG_PORT}/sogo"
    return f"""\
/* Written by bench.webmail_candidates: a minimal SOGo against the bench's Dovecot. */
{{
  /* Its tables in the PostgreSQL the host already runs (SOGo creates them on first use). */
  SOGoProfileURL = "{db}/sogo_user_profile";
  OCSFolderInfoURL = "{db}/sogo_folder_info";
  OCSSessionsFolderURL = "{db}/sogo_sessions_folder";
  OCSEMailAlarmsFolderURL = "{db}/sogo_alarms_folder";
  /* sogod on loopback, behind nginx. */
  WOPort = "127.0.0.1:{SOGOD_PORT}";
  /* A page fires several requests at once: with the default backlog of 5 a busy sogod drops the
     next connection's SYN, which the client resends only after 1 s. */
  WOListenQueueSize = 64;
  /* The users: a view of the same login and hash Dovecot verifies ({{SHA512-CRYPT}}$6$...). */
  SOGoUserSources = (
    {{
      type = sql;
      id = users;
      viewURL = "{db}/sogo_users";
      canAuthenticate = YES;
      isAddressBook = NO;
      userPasswordAlgorithm = sha512-crypt;
      prependPasswordScheme = YES;
    }}
  );
  /* The bench's Dovecot; on the host, the host's own over TLS. */
  SOGoIMAPServer = "imap://127.0.0.1:{IMAP_PORT}";
  /* Not exercised here (no mail is sent). */
  SOGoMailingMechanism = smtp;
  SOGoSMTPServer = "smtp://127.0.0.1:18587";
  /* Completes a bare login into an address where SOGo needs one. */
  SOGoMailDomain = {DOMAIN};
  /* SOGo requires memcached; the bench's listens on loopback on a bench port. */
  SOGoMemcachedHost = "127.0.0.1:{MEMCACHED_PORT}";
  /* Debian's sample values: the users' default time zone and language. */
  SOGoTimeZone = UTC;
  SOGoLanguage = English;
  /* No Sieve server on the bench. */
  SOGoSieveScriptsEnabled = NO;
  SOGoVacationEnabled = NO;
  SOGoForwardEnabled = NO;
  /* Debian's sample values: the special folders' names, as Dovecot's default namespace has them. */
  SOGoSentFolderName = Sent;
  SOGoTrashFolderName = Trash;
  SOGoDraftsFolderName = Drafts;
}}
"""


def radicale_conf(auth: str) -> str:
    """`auth`: "dovecot" (Radicale's own client of Dovecot's auth socket), "plugin" (Debian's
    python3-radicale-dovecot-auth, a client of the same socket) or "imap" (an IMAP LOGIN at Dovecot)."""
    if auth == "dovecot":
        how = """\
# The same passwords as IMAP, asked of Dovecot over its auth socket.
type = dovecot
dovecot_socket = /run/dovecot/auth-client
# DAV clients send their password with every request: remember a good login for 15 s (the
# default expiry) rather than asking Dovecot each time.
cache_logins = true
"""
    elif auth == "plugin":
        how = """\
# The same passwords as IMAP, asked of Dovecot over its auth socket by Debian's plugin (Radicale
# 3.5.3's own type = dovecot fails Dovecot 2.4's handshake: see docs/webmail_choice.md).
type = radicale_dovecot_auth
auth_socket = /run/dovecot/auth-client
"""
    else:
        how = f"""\
# The same passwords as IMAP, checked by an IMAP LOGIN at Dovecot.
type = imap
imap_host = 127.0.0.1:{IMAP_PORT}
# Bench only: plain IMAP on loopback; on the host, TLS to Dovecot with its certificate verified.
imap_security = none
# DAV clients send their password with every request: remember a good login for 15 s (the
# default expiry) rather than logging in to Dovecot each time.
cache_logins = true
"""
    return f"""\
# Written by bench.webmail_candidates.
[server]
# Loopback only, on a bench port; on the host behind nginx.
hosts = 127.0.0.1:{RADICALE_PORT}

[auth]
{how}
[rights]
# Each user sees only their own collections.
type = owner_only

[storage]
# Radicale's default, stated because the bench creates it (owned by radicale) before the start.
filesystem_folder = /var/lib/radicale/collections

[logging]
# Failed logins and errors only: the bench reads the log for the auth attempts' errors.
level = warning
"""


# --- the chroot's processes ---------------------------------------------------------------------------------


@dataclass
class Chroot:
    root: Path
    logs: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, argv: list[str], *, input: str | None = None, check: bool = True) -> str:
        done = trixie_chroot.run_in(self.root, argv, input=input, timeout=DEADLINE * 2)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def ids(self, user: str) -> str:
        for line in (self.root / "etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if parts[0] == user:
                return f"{parts[2]}:{parts[3]}"
        raise RuntimeError(f"no user {user} in the tree")

    def start(self, name: str, argv: list[str], user: str | None = None, env: dict[str, str] | None = None) -> None:
        """Start a daemon in the foreground, its output in logs/<name>.log (chroot execs it: the pid is its)."""
        spec = [f"--userspec={self.ids(user)}"] if user else []
        full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
        out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            ["chroot", *spec, str(self.root), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        self.started.append(proc)

    def stop(self, exe_names: tuple[str, ...]) -> None:
        """SIGTERM the tree's processes with these executables (all started by this bench), then wait."""
        pids = [p for p, exe in self.processes() if exe in exe_names]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        until = time.monotonic() + 20
        while time.monotonic() < until and any(Path(f"/proc/{p}").exists() for p in pids):
            for proc in self.started:
                proc.poll()
            time.sleep(0.2)

    def processes(self) -> list[tuple[int, str]]:
        """(pid, executable's name, or the script's for an interpreter) of every process in this tree."""
        out: list[tuple[int, str]] = []
        prefix = str(self.root)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "root") != prefix:
                    continue
                exe = Path(os.readlink(entry / "exe")).name
                if exe.startswith("python3"):
                    args = (entry / "cmdline").read_bytes().split(b"\0")
                    exe = "radicale" if any(b"radicale" in a for a in args) else exe
            except OSError:
                continue
            out.append((int(entry.name), exe))
        return out

    def kill_all(self) -> None:
        """Whatever this bench started in the tree and is still there: SIGTERM, then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for p, _ in self.processes()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            until = time.monotonic() + 10
            while time.monotonic() < until and self.processes():
                time.sleep(0.2)
        for proc in self.started:
            proc.poll()


GROUPS: dict[str, tuple[str, ...]] = {
    "php-fpm": ("php-fpm8.4",),
    "sogod": ("sogod",),
    "memcached": ("memcached",),
    "radicale": ("radicale",),
    "dovecot": ("dovecot", "imap", "imap-login", "auth", "config", "anvil", "log", "stats"),
    "postgresql": ("postgres",),
    "nginx": ("nginx",),
}


@dataclass(frozen=True)
class Pss:
    """One group's memory: PSS, its anonymous and mapped-file parts (KiB), and how many processes."""

    total: int
    anon: int
    file: int
    procs: int
    each: tuple[int, ...] = ()  # every process's PSS, largest first


Snapshot = dict[str, Pss]


def pss_by_group(chroot: Chroot) -> Snapshot:
    out: Snapshot = {}
    procs = chroot.processes()
    for group, exes in GROUPS.items():
        pids = [p for p, exe in procs if exe in exes]
        if pids:
            each = tuple(sorted((pss_kib([p]) for p in pids), reverse=True))
            out[group] = Pss(pss_kib(pids), pss_kib(pids, "Pss_Anon"), pss_kib(pids, "Pss_File"), len(pids), each)
    return out


def wait_port(port: int, what: str) -> None:
    until = time.monotonic() + DEADLINE
    while time.monotonic() < until:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {DEADLINE:.0f} s")


# --- setting up the tree ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    users: dict[str, str]
    roundcube_db: str
    sogo_db: str


def write(root: Path, path: str, text: str | bytes, mode: int = 0o644) -> None:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        dest.write_bytes(text)
    else:
        dest.write_text(text)
    dest.chmod(mode)


def prepare(chroot: Chroot, sec: Secrets) -> None:
    root = chroot.root
    chroot.run(["groupadd", "-g", str(VMAIL_UID), "vmail"])
    chroot.run(["useradd", "-u", str(VMAIL_UID), "-g", "vmail", "-d", "/var/mail", "-M", "vmail"])
    write(root, "/etc/dovecot/dovecot.conf", dovecot_conf())
    write(root, "/etc/dovecot/bench-users", dovecot_users(sec.users), 0o640)
    chroot.run(["chown", "root:dovecot", "/etc/dovecot/bench-users"])
    for user in USERS:
        maildir = root / f"var/mail/vhosts/{DOMAIN}/{user.split('@')[0]}/Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        for n in range(1, MESSAGES + 1):
            (maildir / "cur" / f"{1796630400 + n}.M{n}P1.bench:2,{'S' if n % 3 else ''}").write_bytes(message(user, n))
    chroot.run(["chown", "-R", "vmail:vmail", "/var/mail/vhosts"])
    conf = chroot.run(["doveconf", "-n"])
    if "passwd_file_path" not in conf:
        raise RuntimeError(f"doveconf did not read the bench config:\n{conf}")

    # PostgreSQL: a cluster of its own (peer auth for the superuser, pg_hba below for the roles).
    chroot.run(["install", "-d", "-o", "postgres", "-g", "postgres", "/var/lib/postgresql/bench"])
    chroot.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/17/bin/initdb", "-D",
                "/var/lib/postgresql/bench", "-A", "peer", "-E", "UTF8", "--locale=C.UTF-8"])  # fmt: skip
    write(root, "/var/lib/postgresql/bench/pg_hba.conf", postgresql_hba(), 0o600)
    chroot.run(["chown", "postgres:postgres", "/var/lib/postgresql/bench/pg_hba.conf"])

    write(root, "/etc/nginx/nginx.conf", nginx_conf())
    chroot.run(["nginx", "-t"])

    write(root, "/etc/roundcube/config.inc.php", roundcube_config(sec.roundcube_db), 0o640)
    chroot.run(["chown", "root:www-data", "/etc/roundcube/config.inc.php"])
    for old in (root / "etc/php/8.4/fpm/pool.d").iterdir():
        old.unlink()
    write(root, "/etc/php/8.4/fpm/pool.d/roundcube.conf", php_fpm_pool())
    write(root, "/etc/php/8.4/fpm/php-fpm.conf", php_fpm_conf())
    chroot.run(["php-fpm8.4", "-t", "--fpm-config", "/etc/php/8.4/fpm/php-fpm.conf"])

    write(root, "/etc/sogo/sogo.conf", sogo_conf(sec.sogo_db), 0o640)
    chroot.run(["chown", "root:sogo", "/etc/sogo/sogo.conf"])

    chroot.run(["install", "-d", "-o", "radicale", "-g", "radicale", "/var/lib/radicale/collections"])


def start_shared(chroot: Chroot, sec: Secrets) -> None:
    """What the host already runs: PostgreSQL, Dovecot, nginx; and the candidates' databases."""
    chroot.run(["install", "-d", "-o", "postgres", "-g", "postgres", "/run/postgresql"])
    # Loopback on a bench port (SOGo's URLs need TCP), its socket where Debian's clients look;
    # every other setting initdb's default: the host's PostgreSQL has its own, so only the
    # difference each candidate makes is reported.
    chroot.start("postgresql", [
        "/usr/lib/postgresql/17/bin/postgres", "-D", "/var/lib/postgresql/bench",
        "-c", "listen_addresses=127.0.0.1", "-c", f"port={PG_PORT}",
        "-c", "unix_socket_directories=/run/postgresql",
    ], user="postgres")  # fmt: skip
    wait_port(PG_PORT, "PostgreSQL")
    psql = ["runuser", "-u", "postgres", "--", "psql", "-h", "/run/postgresql", "-p", str(PG_PORT), "-v",
            "ON_ERROR_STOP=1", "-q"]  # fmt: skip
    chroot.run([*psql, "-f", "-"], input=(
        f"CREATE ROLE roundcube LOGIN PASSWORD '{sec.roundcube_db}';\n"
        "CREATE DATABASE roundcube OWNER roundcube ENCODING 'UTF8';\n"
        f"CREATE ROLE sogo LOGIN PASSWORD '{sec.sogo_db}';\n"
        "CREATE DATABASE sogo OWNER sogo ENCODING 'UTF8';\n"
    ))  # fmt: skip
    schema = (chroot.root / "usr/share/roundcube/SQL/postgres.initial.sql").read_text()
    chroot.run([*psql, "-d", "roundcube", "-f", "-"], input=f"SET ROLE roundcube;\n{schema}")
    rows = ",\n".join(
        f"('{u}', '{u}', '{{SHA512-CRYPT}}{sha512_crypt(p)}', '{u.split('@')[0]}', '{u}')" for u, p in sec.users.items()
    )
    chroot.run([*psql, "-d", "sogo", "-f", "-"], input=(
        "SET ROLE sogo;\n"
        "CREATE TABLE sogo_users (c_uid text PRIMARY KEY, c_name text NOT NULL, c_password text NOT NULL,"
        " c_cn text, mail text);\n"
        f"INSERT INTO sogo_users VALUES {rows};\n"
    ))  # fmt: skip

    chroot.start("dovecot", ["dovecot", "-F"])
    wait_port(IMAP_PORT, "Dovecot")
    chroot.start("nginx", ["nginx", "-g", "daemon off;"])
    wait_port(ROUNDCUBE_PORT, "nginx")


# --- HTTP clients ------------------------------------------------------------------------------------------------


class Session:
    """One browser: a cookie jar, no proxies, every request bounded by DEADLINE."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(self.jar)
        )

    def request(
        self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None
    ) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {}, method=method)
        try:
            with self.opener.open(req, timeout=DEADLINE) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def cookie(self, name: str) -> str:
        return next((c.value or "" for c in self.jar if c.name == name), "")


class LoginFailed(RuntimeError):
    pass


def roundcube_session(user: str, password: str) -> float:
    """Log in through Roundcube's form, open the inbox and its message list; seconds from the POST."""
    s = Session(f"http://127.0.0.1:{ROUNDCUBE_PORT}")
    status, page = s.request("/?_task=login")
    token = re.search(r'name="_token" value="([^"]+)"', page)
    if status != 200 or not token:
        raise LoginFailed(f"Roundcube login page: {status}, no _token")
    form = {"_token": token.group(1), "_task": "login", "_action": "login", "_timezone": "UTC", "_url": "",
            "_user": user, "_pass": password}  # fmt: skip
    began = time.monotonic()
    status, page = s.request("/?_task=login", urllib.parse.urlencode(form).encode())
    # The POST redirects to the mail task; urllib follows it, so `page` is the inbox page.
    if status != 200 or '"task":"mail"' not in page or 'id="rcmloginuser"' in page:
        raise LoginFailed(f"Roundcube login of {user}: {status}, not the mail page")
    request_token = re.search(r'"request_token":"([^"]+)"', page)
    if not request_token:
        raise LoginFailed("Roundcube mail page without a request_token")
    status, body = s.request(
        "/?_task=mail&_action=list&_mbox=INBOX&_page=1&_remote=1",
        headers={"X-Roundcube-Request": request_token.group(1), "X-Requested-With": "XMLHttpRequest"},
    )
    elapsed = time.monotonic() - began
    uids = re.findall(r"add_message_row\((\d+)", body)
    if status != 200 or len(uids) != MESSAGES:
        raise LoginFailed(f"Roundcube message list of {user}: {status}, {len(uids)} rows, not {MESSAGES}")
    # Then read a few messages, as a user does: the sessions hold the workers as a user would.
    for uid in uids[:READ]:
        status, shown = s.request(f"/?_task=mail&_action=show&_uid={uid}&_mbox=INBOX")
        if status != 200 or "Body of message" not in shown:
            raise LoginFailed(f"Roundcube message {uid} of {user}: {status}, no body")
    return elapsed


def sogo_session(user: str, password: str) -> float:
    """POST /SOGo/connect, open the mail view and the INBOX's message list; seconds from the POST."""
    s = Session(f"http://127.0.0.1:{SOGO_WEB_PORT}")
    status, _ = s.request("/SOGo/")
    if status != 200:
        raise LoginFailed(f"SOGo login page: {status}")
    body = json.dumps({"userName": user, "password": password, "rememberLogin": 0}).encode()
    began = time.monotonic()
    status, answer = s.request("/SOGo/connect", body, {"Content-Type": "application/json"})
    if status != 200 or not s.cookie("0xHIGHFLYxSOGo"):
        raise LoginFailed(f"SOGo login of {user}: {status} {answer[:200]}")
    status, page = s.request(f"/SOGo/so/{user}/Mail/view")
    if status != 200 or "Mail" not in page or "connect" in page.split("<title>")[-1][:80]:
        raise LoginFailed(f"SOGo mail view of {user}: {status}")
    xsrf = urllib.parse.unquote(s.cookie("XSRF-TOKEN"))
    query = json.dumps({"sortingAttributes": {"sort": "arrival", "asc": 0}}).encode()
    status, listing = s.request(
        f"/SOGo/so/{user}/Mail/0/folderINBOX/view",
        query,
        {"Content-Type": "application/json", "X-XSRF-TOKEN": xsrf, "X-Requested-With": "XMLHttpRequest"},
    )
    elapsed = time.monotonic() - began
    try:
        uids = json.loads(listing).get("uids", [])
    except ValueError:
        uids = []
    if status != 200 or len(uids) != MESSAGES:
        raise LoginFailed(f"SOGo message list of {user}: {status}, {len(uids)} uids: {listing[:200]}")
    # Then read a few messages, as a user does.
    for uid in uids[:READ]:
        status, shown = s.request(
            f"/SOGo/so/{user}/Mail/0/folderINBOX/{uid}/view",
            b"{}",
            {"Content-Type": "application/json", "X-XSRF-TOKEN": xsrf, "X-Requested-With": "XMLHttpRequest"},
        )
        if status != 200 or "Body of message" not in shown:
            raise LoginFailed(f"SOGo message {uid} of {user}: {status}, no body: {shown[:200]}")
    return elapsed


EVENT = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//SAMS//bench//EN\r
BEGIN:VEVENT\r
UID:{uid}\r
DTSTAMP:20261207T100000Z\r
DTSTART:20261208T100000Z\r
DTEND:20261208T110000Z\r
SUMMARY:Bench event\r
END:VEVENT\r
END:VCALENDAR\r
"""


def radicale_session(user: str, password: str) -> float:
    """PROPFIND (a login), MKCALENDAR, PUT and GET an event; seconds from the PROPFIND. Then
    another user's GET of it must be refused."""
    s = Session(f"http://127.0.0.1:{RADICALE_PORT}")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    began = time.monotonic()
    status, _ = s.request(f"/{user}/", headers={**auth, "Depth": "0"}, method="PROPFIND")
    if status != 207:
        raise LoginFailed(f"Radicale PROPFIND of {user}: {status}")
    # A calendar per session (a user may log in more than once).
    uid = f"bench-{secrets.token_hex(6)}"
    calendar = f"/{user}/{uid}/"
    status, _ = s.request(calendar, headers=auth, method="MKCALENDAR")
    if status != 201:
        raise LoginFailed(f"Radicale MKCALENDAR of {user}: {status}")
    event = EVENT.format(uid=uid).encode()
    status, _ = s.request(f"{calendar}{uid}.ics", event, {**auth, "Content-Type": "text/calendar"}, "PUT")
    if status != 201:
        raise LoginFailed(f"Radicale PUT of {user}: {status}")
    status, body = s.request(f"{calendar}{uid}.ics", headers=auth)
    elapsed = time.monotonic() - began
    if status != 200 or uid not in body:
        raise LoginFailed(f"Radicale GET of {user}'s event: {status}")
    return elapsed


def start_radicale(chroot: Chroot) -> None:
    chroot.start("radicale", ["/usr/bin/radicale", "--config", "/etc/radicale/config"], user="radicale",
                 env={"HOME": "/var/lib/radicale"})  # fmt: skip
    wait_port(RADICALE_PORT, "Radicale")


def radicale_auth_check(chroot: Chroot, sec: Secrets, auth: str) -> tuple[bool, str]:
    """Whether one login through Radicale with this `auth` works, and what it said; Radicale is
    stopped afterwards."""
    write(chroot.root, "/etc/radicale/config", radicale_conf(auth))
    log = chroot.logs / "radicale.log"
    seen = log.stat().st_size if log.exists() else 0
    start_radicale(chroot)
    try:
        radicale_session(*next(iter(sec.users.items())))
        ok, outcome = True, "logins work"
    except LoginFailed as err:
        ok, outcome = False, f"logins refused ({err})"
    chroot.stop(("radicale",))
    said = log.read_text(errors="replace")[seen:]
    if "broken server handshake" in said:
        outcome += ": Radicale logged 'Encountered a broken server handshake!' (Radicale issue #1878)"
    elif not ok:
        errors = [line.split("] ", 3)[-1] for line in said.splitlines() if "[ERROR]" in line or "[CRITICAL]" in line]
        outcome += ": Radicale logged " + " / ".join(errors[-2:])[:300]
    return ok, outcome


# --- measuring ---------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    name: str
    idle: Snapshot
    peak: Snapshot
    after: Snapshot
    later: Snapshot
    cold: float
    times: list[float]
    drops: int


class PeakSampler:
    """Samples the groups' PSS every 0.25 s in a thread while the sessions run; keeps each group's
    largest total."""

    def __init__(self, chroot: Chroot, groups: tuple[str, ...]) -> None:
        self.chroot, self.groups = chroot, groups
        self.peak: Snapshot = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        until = time.monotonic() + DEADLINE * 3
        while not self.done.is_set() and time.monotonic() < until:
            for g, v in pss_by_group(self.chroot).items():
                if g in self.groups and v.total > self.peak.get(g, Pss(0, 0, 0, 0)).total:
                    self.peak[g] = v
            self.done.wait(0.25)

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=DEADLINE)


def listen_drops() -> int:
    """The kernel's count of connections dropped because a listen queue was full (TcpExt
    ListenDrops, this network namespace): a dropped SYN costs the client a 1 s retransmission."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenDrops"])
    return 0


def measure(
    chroot: Chroot,
    name: str,
    session: Callable[[str, str], float],
    users: dict[str, str],
    quiet: float,
    sessions: int,
    groups: tuple[str, ...],
) -> Figures:
    time.sleep(quiet)
    idle = pss_by_group(chroot)
    logins = list(users.items())
    # One login alone first: what the first user after a quiet time waits (an ondemand pool forks).
    cold = session(*logins[0])
    drops = listen_drops()
    with PeakSampler(chroot, groups) as sampler, ThreadPoolExecutor(max_workers=sessions) as pool:
        times = list(pool.map(lambda i: session(*logins[i % len(logins)]), range(sessions), timeout=DEADLINE * 3))
    drops = listen_drops() - drops
    after = pss_by_group(chroot)
    time.sleep(15)
    later = pss_by_group(chroot)
    return Figures(name, idle, sampler.peak, after, later, cold, times, drops)


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def pss_line(fig: Snapshot, groups: tuple[str, ...]) -> str:
    return (
        ", ".join(
            f"{g} {mib(fig[g].total)} (anon {mib(fig[g].anon)}, file {mib(fig[g].file)}; {fig[g].procs} proc)"
            for g in groups
            if g in fig
        )
        or "none running"
    )


def total(fig: Snapshot, groups: tuple[str, ...]) -> str:
    return mib(sum(fig[g].total for g in groups if g in fig))


def rows_for(
    f: Figures, own: tuple[str, ...], extra: tuple[str, ...], sessions: int, timed: str = "login to inbox listed"
) -> list[tuple[str, str]]:
    shared = ("dovecot", "postgresql", "nginx")
    ordered = sorted(f.times)
    both = (*own, *extra)
    zero = Pss(0, 0, 0, 0)
    return [
        (f"{f.name}: idle PSS, its own processes + what it adds (MiB)",
         f"{total(f.idle, both)}: {pss_line(f.idle, both)}"),
        (f"{f.name}: peak PSS during {sessions} concurrent sessions (MiB)",
         f"{total(f.peak, both)}: {pss_line(f.peak, both)}"),
        (f"{f.name}: PSS right after the sessions (MiB)", f"{total(f.after, both)}: {pss_line(f.after, both)}"),
        (f"{f.name}: the same, each process (MiB)",
         "; ".join(f"{g} " + ", ".join(mib(k) for k in f.after[g].each) for g in both if g in f.after)),
        (f"{f.name}: PSS 15 s after the sessions (MiB)", f"{total(f.later, both)}: {pss_line(f.later, both)}"),
        (f"{f.name}: shared daemons' PSS, idle -> after the sessions (MiB)",
         ", ".join(f"{g} {mib(f.idle.get(g, zero).total)} -> {mib(f.after.get(g, zero).total)}" for g in shared)),
        (f"{f.name}: {timed}, alone (s)", f"{f.cold:.3f}"),
        (f"{f.name}: the same, {sessions} concurrent: median / max (s)",
         f"{ordered[len(ordered) // 2]:.3f} / {ordered[-1]:.3f}"),
        (f"{f.name}: connections dropped by a full listen queue meanwhile (this machine)", str(f.drops)),
    ]  # fmt: skip


@contextlib.contextmanager
def bench_tree() -> Iterator[Chroot]:
    pristine = ensure_webmail_tree()
    work = Path(tempfile.mkdtemp(prefix="sams-webmail-"))
    logs = Path(tempfile.mkdtemp(prefix="sams-webmail-logs-"))
    # trixie_chroot.scratch overlays its own tree; the same, on ours.
    upper, wdir, merged = work / "upper", work / "work", work / "root"
    for d in (upper, wdir, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={pristine},upperdir={upper},workdir={wdir}", str(merged)], check=True)  # fmt: skip
    chroot = Chroot(merged, logs)
    try:
        with trixie_chroot.mounted(merged):
            try:
                yield chroot
            finally:
                chroot.kill_all()
    finally:
        subprocess.run(["umount", str(merged)], check=False)
        trixie_chroot.remove_tree(work)
        print(f"daemon logs kept in {logs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quiet", type=float, default=60, help="seconds idle before the idle figure (default 60)")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent logins (default 10)")
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to bench/RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it builds and chroots into a Debian tree")
    sec = Secrets(
        users={u: secrets.token_urlsafe(12) for u in USERS},
        roundcube_db=secrets.token_hex(12),
        sogo_db=secrets.token_hex(12),
    )
    figures: list[tuple[str, str]] = []
    with bench_tree() as chroot:
        ver = versions(ensure_webmail_tree())
        prepare(chroot, sec)
        start_shared(chroot, sec)

        chroot.run(["install", "-d", "/run/php"])
        chroot.start("php-fpm", ["php-fpm8.4", "--nodaemonize", "--fpm-config", "/etc/php/8.4/fpm/php-fpm.conf"])
        time.sleep(1)
        roundcube = measure(chroot, "Roundcube", roundcube_session, sec.users, args.quiet, args.sessions, ("php-fpm",))
        chroot.stop(("php-fpm8.4",))
        figures += rows_for(roundcube, ("php-fpm",), (), args.sessions)

        chroot.run(["install", "-d", "-o", "sogo", "-g", "sogo", "/run/sogo"])
        chroot.run(["install", "-d", "-o", "sogo", "-g", "sogo", "/var/log/sogo"])
        # Loopback, bench port; its cache at memcached's default 64 MiB cap (PSS counts only what it fills).
        chroot.start("memcached", ["memcached", "-l", "127.0.0.1", "-p", str(MEMCACHED_PORT)], user="memcache")
        wait_port(MEMCACHED_PORT, "memcached")
        # In the foreground (WONoDetach) so the bench holds its pid; 3 workers, Debian's PREFORK and what
        # SOGo's installation guide calls "a reasonable default for low usage"; each keeps ~21 MiB once used.
        chroot.start("sogod", ["/usr/sbin/sogod", "-WONoDetach", "YES", "-WOWorkersCount", str(SOGO_WORKERS),
                               "-WOPidFile", "/run/sogo/sogo.pid", "-WOLogFile", "/var/log/sogo/sogo.log"],
                     user="sogo", env={"HOME": "/run/sogo"})  # fmt: skip
        wait_port(SOGOD_PORT, "sogod")
        sogo = measure(chroot, "SOGo", sogo_session, sec.users, args.quiet, args.sessions, ("sogod", "memcached"))
        chroot.stop(("sogod", "memcached"))
        figures += rows_for(sogo, ("sogod",), ("memcached",), args.sessions)

        # Dovecot's auth socket first (the choice): Radicale's own client, then Debian's plugin.
        _, own = radicale_auth_check(chroot, sec, "dovecot")
        figures.append(("Radicale [auth] type = dovecot (Radicale's own), against Dovecot 2.4", own))
        plugin_ok, plugin = radicale_auth_check(chroot, sec, "plugin")
        figures.append(("Radicale [auth] type = radicale_dovecot_auth (Debian's plugin)", plugin))
        radicale_auth = "plugin" if plugin_ok else "imap"
        write(chroot.root, "/etc/radicale/config", radicale_conf(radicale_auth))
        start_radicale(chroot)
        radicale = measure(chroot, "Radicale", radicale_session, sec.users, args.quiet, args.sessions, ("radicale",))
        # The owner_only rights: another user may not read user01's calendar.
        other = list(sec.users.items())[1]
        status, _ = Session(f"http://127.0.0.1:{RADICALE_PORT}").request(
            f"/{USERS[0]}/",
            headers={"Authorization": "Basic " + base64.b64encode(f"{other[0]}:{other[1]}".encode()).decode(),
                     "Depth": "1"}, method="PROPFIND")  # fmt: skip
        if status != 403:
            raise LoginFailed(f"Radicale let {other[0]} read {USERS[0]}'s calendar: {status}")
        figures += rows_for(radicale, ("radicale",), (), args.sessions, "PROPFIND to the new event read back")
        figures.append(("Radicale: authentication used for the figures above", radicale_auth))
        figures.append(("Radicale: another user's PROPFIND of user01's calendar", f"{status} (refused)"))

    pkgs = ("roundcube-core", "php8.4-fpm", "sogo", "memcached", "radicale", "dovecot-core", "postgresql-17", "nginx")
    figures.append(("versions (Debian 13)", ", ".join(f"{p} {ver.get(p, '?')}" for p in pkgs)))
    notes = (
        f"Chroot of Debian 13 on this machine (no systemd); each candidate started alone beside the shared "
        f"Dovecot, PostgreSQL and nginx, measured after {args.quiet:.0f} s idle. PSS = sum of Pss in "
        "/proc/<pid>/smaps_rollup of the candidate's processes. Sessions: real logins of 10 users (30 "
        "messages each), each checked to reach its own message list or event; times from the login POST "
        f"(Radicale: the first PROPFIND) to the list. PHP-FPM pm=ondemand, max_children={FPM_MAX_CHILDREN}; "
        f"sogod {SOGO_WORKERS} workers (Debian's PREFORK default), WOListenQueueSize 64; memcached at its defaults. "
        "Choice and reasons: "
        "docs/webmail_choice.md."
    )
    if args.no_record:
        for k, v in figures:
            print(f"{k}: {v}")
        print(notes)
    else:
        record("Webmail candidates: memory and login time", figures, notes)


if __name__ == "__main__":
    main()
