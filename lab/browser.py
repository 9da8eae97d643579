"""A real browser in the lab: Debian's Chromium, headless, driven by Selenium through Debian's
chromedriver, both running inside a lab network namespace.

Where the traffic goes: chromedriver is started with ``ip netns exec <ns>``, so it and the
Chromium it launches live in that namespace and every page load leaves from there (sams-inet is
the internet, sams-admin the WireGuard peer). chromedriver listens on the namespace's own
127.0.0.1, which the root namespace cannot reach; the test's Selenium client reaches it through
sockets *created* inside the namespace (a short-lived thread enters it with setns(2), makes the
socket and ends; a socket stays in the namespace it was made in). So the WebDriver object lives in
the test process, and the only traffic it sends is on the namespace's loopback: nothing is sent
from the root namespace to the lab's networks. Selenium Manager never runs: ``webdriver.Remote``
is given the running chromedriver and Chromium's binary path, nothing is looked up or downloaded.

Names: Chromium resolves nothing itself. ``--host-resolver-rules`` maps each name of `host_map`
to its address and every other name to NOTFOUND, so SNI and the certificate's name check are the
real ones and no lookup leaves the namespace.

TLS: Chromium verifies against the CA it is given and nothing else the lab would accept. Each
browser has a fresh profile and HOME; the CA's self-signed roots are imported as trust anchors
(``certutil``, Debian's libnss3-tools) into the NSS database ``$HOME/.pki/nssdb`` that Chromium on
Linux reads for locally trusted roots, and the intermediates beside them without trust. With
``ca_pem=None`` the lab's certificates are untrusted and a page shows Chromium's
certificate error (:meth:`Browser.load` returns it). No ``--ignore-certificate-errors`` of any kind.

Bounded: chromedriver must answer within ``DRIVER_START_S``, every WebDriver call within
``HTTP_TIMEOUT_S``, a page load within ``PAGE_LOAD_S``; at exit the session is quit and
chromedriver's process group (Chromium and its helpers with it) is killed, SIGKILL if it lingers.

Example, a webmail login from the internet (``lab`` is the session fixture)::

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from lab import acme, browser
    from lab.spec import NAMES

    host = lab.settings.config.hostname
    ca = acme.issuer_pems(lab.paths, lab.spec.inet_ipv4)
    with browser.browser(NAMES.ns_inet, host_map={host: lab.spec.public_ipv4}, ca_pem=ca,
                         artifacts=browser.artifacts_dir("test_webmail_login")) as b:
        assert b.load(f"https://{host}/") is None  # else Chromium's error, "net::ERR_..."
        b.wait().until(EC.presence_of_element_located((By.NAME, "_user")))
        b.driver.find_element(By.NAME, "_user").send_keys("alice@example.org")
        b.driver.find_element(By.NAME, "_pass").send_keys(password)
        b.driver.find_element(By.NAME, "_pass").submit()
        b.wait(20).until(EC.presence_of_element_located((By.ID, "messagelist")))
        b.shot("inbox")  # <artifacts>/inbox.png: look at it
        assert "Subject of the message" in b.text()

``b.start_s`` is how long chromedriver and Chromium took to be ready, ``b.pss_kib()`` what the
driver, Chromium and its helpers hold now (PSS, from /proc/<pid>/smaps_rollup).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from lab.proc import netns_exec

# The real binary: /usr/bin/chromium is Debian's launcher script, which adds /etc/chromium.d's
# flags (GPU rasterization, media router) that a test browser should not get unasked.
CHROMIUM = "/usr/lib/chromium/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CERTUTIL = "certutil"

DRIVER_START_S = 20.0  # chromedriver answering /status
HTTP_TIMEOUT_S = 60  # any one WebDriver command
PAGE_LOAD_S = 30.0  # driver.get() and navigations
SCRIPT_S = 30.0  # execute_script / execute_async_script
KILL_WAIT_S = 5.0  # after SIGTERM to the process group, before SIGKILL
WINDOW = (1280, 900)

REPO = Path(__file__).resolve().parent.parent


# --- pure: what is run -----------------------------------------------------------------------------


def resolver_rules(host_map: dict[str, str]) -> str:
    """``--host-resolver-rules``: each name to its address, every other name to NOTFOUND."""
    for name, address in host_map.items():
        if not re.fullmatch(r"[A-Za-z0-9.*-]+", name) or not re.fullmatch(r"[0-9A-Fa-f.:\[\]]+", address):
            raise ValueError(f"host_map entry {name!r} -> {address!r} is not a name and an address")
    rules = [f"MAP {name} {address}" for name, address in host_map.items()]
    return ", ".join([*rules, "MAP * ~NOTFOUND"])


def chromium_flags(host_map: dict[str, str], user_data_dir: Path, window: tuple[int, int] = WINDOW) -> list[str]:
    """Chromium's command line (without the binary); each flag carries its why."""
    return [
        "--headless",  # no display here; Chromium's (new) headless mode is the full browser
        "--no-sandbox",  # the lab runs as root, and Chromium's sandbox refuses root
        "--disable-gpu",  # no GPU: software rendering only, no GPU process probing
        "--disable-background-networking",  # no update, safe-browsing or variations fetches
        "--disable-component-update",  # no component downloads (there is no network for them)
        "--disable-sync",  # no Google account sync
        "--disable-breakpad",  # no crash reporter process that could outlive the browser
        "--no-first-run",  # no first-run tabs or dialogs in the fresh profile
        "--no-default-browser-check",  # no "make default" prompt
        "--disable-quic",  # HTTPS over TCP only, as the host's nginx serves it
        "--password-store=basic",  # no desktop keyring (D-Bus) lookups for saved passwords
        "--lang=en-US",  # English pages, so error texts and buttons read the same everywhere
        f"--window-size={window[0]},{window[1]}",  # screenshots of a laptop-sized page
        f"--user-data-dir={user_data_dir}",  # a fresh profile per browser: no cookies carried over
        f"--host-resolver-rules={resolver_rules(host_map)}",  # names without the lab DNS
    ]


def chromedriver_argv(ns: str, port: int, log_path: Path) -> list[str]:
    """chromedriver inside network namespace `ns`, on that namespace's 127.0.0.1:`port` only."""
    return netns_exec(
        ns,
        [
            CHROMEDRIVER,
            f"--port={port}",
            "--allowed-ips=127.0.0.1",  # only the client in the same namespace
            f"--log-path={log_path}",
        ],
    )


@dataclass(frozen=True)
class CaCert:
    nickname: str
    pem: str
    anchor: bool  # a self-signed root: trusted for TLS servers; else carried, not trusted


def ca_certs(ca_pem: str) -> list[CaCert]:
    """Each certificate of a PEM bundle; the self-signed ones (roots) become trust anchors."""
    from cryptography import x509

    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", ca_pem, re.S)
    if not blocks:
        raise ValueError("ca_pem holds no certificate")
    certs = []
    for i, block in enumerate(blocks):
        cert = x509.load_pem_x509_certificate(block.encode())
        certs.append(CaCert(f"lab-ca-{i}", block + "\n", cert.issuer == cert.subject))
    if not any(c.anchor for c in certs):
        raise ValueError("ca_pem holds no self-signed root to trust")
    return certs


def nss_commands(nssdb: Path, certs: list[CaCert], files: list[Path]) -> list[list[str]]:
    """certutil calls that make an empty NSS database and add each certificate (file i = cert i)."""
    db = f"sql:{nssdb}"
    commands = [[CERTUTIL, "-N", "-d", db, "--empty-password"]]
    for cert, path in zip(certs, files, strict=True):
        # "C,,": a CA trusted to issue TLS server certificates; ",,": known, trusted for nothing.
        commands.append(
            [CERTUTIL, "-A", "-d", db, "-n", cert.nickname, "-t", "C,," if cert.anchor else ",,", "-i", str(path)]
        )
    return commands


def artifacts_dir(test: str) -> Path:
    """Where a test's screenshots go: $SAMS_ARTIFACTS/<test>, else lab/artifacts/<test> (gitignored)."""
    base = Path(os.environ.get("SAMS_ARTIFACTS") or REPO / "lab" / "artifacts")
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", test)


# --- shell: sockets inside a namespace -------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def socket_in(ns: str) -> socket.socket:
    """A TCP socket that belongs to network namespace `ns` (made by a thread that entered it)."""
    made: dict[str, Any] = {}

    def enter() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            made["socket"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except BaseException as exc:
            made["error"] = exc

    thread = threading.Thread(target=enter, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    sock: socket.socket = made["socket"]
    return sock


def free_port(ns: str) -> int:
    """A free TCP port on `ns`'s 127.0.0.1."""
    with socket_in(ns) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _NetnsConnection(HTTPConnection):
    netns = ""

    def _new_conn(self) -> socket.socket:
        sock = socket_in(self.netns)
        try:
            sock.settimeout(self.timeout if isinstance(self.timeout, (int, float)) else HTTP_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect((self._dns_host, self.port))
        except OSError as exc:
            sock.close()
            raise urllib3.exceptions.NewConnectionError(self, f"{self.netns}: {exc}") from exc
        return sock


def _pool_manager(ns: str) -> urllib3.PoolManager:
    """A urllib3 pool whose HTTP connections are made inside `ns`."""
    connection = type("NetnsConnection", (_NetnsConnection,), {"netns": ns})
    pool = type("NetnsPool", (HTTPConnectionPool,), {"ConnectionCls": connection})
    manager = urllib3.PoolManager(timeout=HTTP_TIMEOUT_S, retries=False)
    manager.pool_classes_by_scheme = {"http": pool}
    return manager


def _driver_status(ns: str, port: int) -> bool:
    try:
        reply = _pool_manager(ns).request("GET", f"http://127.0.0.1:{port}/status", timeout=2.0)
    except urllib3.exceptions.HTTPError:
        return False
    return reply.status == 200 and b'"ready":true' in reply.data.replace(b" ", b"")


# --- shell: processes --------------------------------------------------------------------------------


def browser_pids(pgid: int, workdir: Path) -> list[int]:
    """The live processes of one browser: chromedriver's process group (Chromium, its zygotes,
    renderers and utilities), and whatever names `workdir` on its command line (Chromium's crashpad
    handlers make their own session, their parent gone: they name the profile's crash database)."""
    pids = []
    needle = str(workdir).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and (int(fields[2]) == pgid or needle in cmdline):
                pids.append(int(entry))
    return pids


def pss_kib(pids: list[int]) -> int:
    """The summed PSS of these processes (kB), from smaps_rollup; gone processes count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def _kill(pgid: int, workdir: Path) -> None:
    """SIGTERM the browser's processes, then SIGKILL what is left after KILL_WAIT_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in browser_pids(pgid, workdir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + KILL_WAIT_S
        while browser_pids(pgid, workdir) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not browser_pids(pgid, workdir):
            return
    raise RuntimeError(f"browser processes survive SIGKILL: {browser_pids(pgid, workdir)}")


# Chromium's own error pages: the body's class is "ssl" (certificate interstitial) or "neterror";
# the code is in #error-code. On any other page: null.
ERROR_PAGE_CODE = """
const body = document.body, code = document.getElementById('error-code');
if (!body || !code || !['ssl', 'neterror'].some(c => body.classList.contains(c))) return null;
return code.textContent.trim();
"""


@dataclass
class Browser:
    """One running browser: the WebDriver, its screenshots, its start time and its memory."""

    driver: Any  # selenium.webdriver.Remote
    artifacts: Path
    start_s: float
    pgid: int
    workdir: Path
    port: int  # chromedriver's, on the namespace's 127.0.0.1
    shots: list[Path] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        """Save a screenshot of the page as <artifacts>/<name>.png; its path."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"no screenshot saved to {path}")
        self.shots.append(path)
        return path

    def wait(self, timeout: float = 10.0) -> Any:
        """A WebDriverWait of `timeout` seconds (``b.wait().until(EC....)``)."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout)

    def text(self) -> str:
        """The visible text of the page's body."""
        from selenium.webdriver.common.by import By

        text: str = self.driver.find_element(By.TAG_NAME, "body").text
        return text

    def pss_kib(self) -> int:
        """PSS of chromedriver, Chromium and its helpers now (kB)."""
        return pss_kib(browser_pids(self.pgid, self.workdir))

    def load(self, url: str) -> str | None:
        """Open `url`: None when the page loaded, else Chromium's net error ("net::ERR_...").

        A certificate Chromium does not accept shows its interstitial ("Your connection is not
        private"), which the driver counts as a page: its #error-code names the error. Other net
        errors (refused, not resolved) the driver raises; both come back the same way.
        """
        from selenium.common.exceptions import WebDriverException

        try:
            self.driver.get(url)
        except WebDriverException as exc:
            match = re.search(r"net::ERR_[A-Z_]+", exc.msg or "")
            if match is None:
                raise
            return match.group(0)
        code: str | None = self.driver.execute_script(ERROR_PAGE_CODE)
        return code


def _trust_store(home: Path, ca_pem: str | None) -> None:
    """$HOME/.pki/nssdb for Chromium: the CA's roots trusted (none if ca_pem is None)."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    certs = ca_certs(ca_pem) if ca_pem is not None else []
    files = []
    for cert in certs:
        path = home / f"{cert.nickname}.pem"
        path.write_text(cert.pem)
        files.append(path)
    for cmd in nss_commands(nssdb, certs, files):
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def browser(
    namespace: str,
    *,
    host_map: dict[str, str],
    ca_pem: str | None,
    artifacts: Path,
    window: tuple[int, int] = WINDOW,
) -> Iterator[Browser]:
    """Chromium and chromedriver in `namespace`, a fresh profile trusting `ca_pem`; see the module doc."""
    from selenium import webdriver
    from selenium.webdriver.chromium.remote_connection import ChromiumRemoteConnection
    from selenium.webdriver.common.proxy import Proxy, ProxyType
    from selenium.webdriver.remote.client_config import ClientConfig

    workdir = Path(tempfile.mkdtemp(prefix="sams-browser-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    proc: subprocess.Popen[bytes] | None = None
    driver: Any = None
    try:
        home = workdir / "home"
        _trust_store(home, ca_pem)
        started = time.monotonic()
        port = free_port(namespace)
        log_path = artifacts / "chromedriver.log"
        proc = subprocess.Popen(
            chromedriver_argv(namespace, port, log_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: Chromium and helpers die with it
            env={"HOME": str(home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TMPDIR": str(workdir)},
        )
        deadline = time.monotonic() + DRIVER_START_S
        while not _driver_status(namespace, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromedriver in {namespace} did not answer on :{port}; see {log_path}")
            time.sleep(0.05)
        driver_s = time.monotonic() - started

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in chromium_flags(host_map, workdir / "profile", window):
            options.add_argument(flag)
        options.page_load_strategy = "normal"
        config = ClientConfig(
            remote_server_addr=f"http://127.0.0.1:{port}",
            keep_alive=True,
            timeout=HTTP_TIMEOUT_S,
            proxy=Proxy({"proxyType": ProxyType.DIRECT}),  # never an http_proxy from the environment
        )

        class NetnsRemoteConnection(ChromiumRemoteConnection):
            def _get_connection_manager(self) -> urllib3.PoolManager:
                return _pool_manager(namespace)

        connection = NetnsRemoteConnection(
            remote_server_addr=f"http://127.0.0.1:{port}",
            vendor_prefix="goog",
            browser_name="chrome",
            client_config=config,
        )
        driver = webdriver.Remote(command_executor=connection, options=options)
        driver.set_page_load_timeout(PAGE_LOAD_S)
        driver.set_script_timeout(SCRIPT_S)
        start_s = time.monotonic() - started
        b = Browser(driver, artifacts, start_s, proc.pid, workdir, port)
        print(
            f"\nbrowser in {namespace}: chromedriver ready {driver_s:.2f} s, Chromium ready {start_s:.2f} s, "
            f"PSS {b.pss_kib() / 1024:.0f} MiB"
        )
        yield b
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        if proc is not None:
            _kill(proc.pid, workdir)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_WAIT_S)
        shutil.rmtree(workdir, ignore_errors=True)
