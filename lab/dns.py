"""The lab's DNS: NSD, authoritative only, at the internet's address in ``sams-inet`` (198.18.0.1).

It serves the zones the program publishes through Cloudflare (its ``DnsRecord`` inputs, read back
as :class:`components.dns.records.Record` and rendered by :mod:`components.dns.zonefile`) plus the
lab's own world, Records too: the reverse zone of the lab's /24 (the host's PTR is its hostname, as
the provider's rDNS would say), a remote sender's domain and the independent receiver's domain
(:mod:`lab.receiver`), and an empty root zone. Nothing recurses and no query leaves the lab: every
other name gets an authoritative NXDOMAIN, which is what the real internet answers for a name that
does not exist or an address no blocklist lists (RBL lookups by Rspamd). REFUSED instead made every
such lookup a resolver error that Rspamd retries and counts against its only upstream, so the lab's
mail path measured that, not the mail system.

Why NSD: authoritative-only by design (no resolver to switch off), one short config file, zones in
memory, ~5 MB resident, and ``nsd-checkzone`` for the unit tests. Knot would do as well; BIND is a
resolver too and heavier.

The zone texts travel in :attr:`LabSpec.dns_zones` (made by :func:`zones_for_run` from the mock
run); :func:`start` writes them with ``nsd.conf`` into ``run/dns`` and starts ``nsd -d`` there.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from components.dns import records, zonefile
from components.dns.records import Record
from lab.proc import LabError, daemon_pid, netns_exec, run, stop_daemon, tail
from lab.spec import NAMES, LabSpec, StatePaths

if TYPE_CHECKING:
    import mockrun

log = logging.getLogger("lab.dns")

DNSRECORD = "cloudflare:index/dnsRecord:DnsRecord"
GETZONE = "cloudflare:index/getZone:getZone"
# The lab's own names: its nameserver, a remote MTA that sends to SAMS, the independent receiver.
LAB_ZONE = "lab.example"
NAMESERVER = f"ns.{LAB_ZONE}"
# A mail provider's relay for sams:relay (lab/smarthost.py, started by the relay test).
SMARTHOST = f"smtp.{LAB_ZONE}"
# The backup server for sams:backup (lab/backupserver.py, restic-rest-server), started by `up`; the
# SFTP backup tests add an sshd on the same name (lab/sftpserver.py).
BACKUP_SERVER = f"backup.{LAB_ZONE}"
# An S3-compatible object store (lab/s3server.py, rclone serve s3), started by the backup tests.
S3_SERVER = f"s3.{LAB_ZONE}"
# The provider's Debian mirror, the host's only apt source (lab/mirror.py), started by `up`.
MIRROR = f"deb.{LAB_ZONE}"
SENDER_DOMAIN = "sender.example"
RECEIVER_DOMAIN = "receiver.example"
TTL = 300


# --- pure: the zones ------------------------------------------------------------------------------


def reverse_zone(address: str, prefix: int) -> str:
    """The in-addr.arpa zone of the /8, /16 or /24 around `address`."""
    if prefix not in (8, 16, 24):
        raise ValueError(f"reverse zones here cover /8, /16 or /24, not /{prefix}")
    octets = address.split(".")[: prefix // 8]
    return ".".join(reversed(octets)) + ".in-addr.arpa"


def ptr(address: str) -> str:
    return ipaddress.IPv4Address(address).reverse_pointer


def lab_records(
    *, hostname: str, public_ipv4: str, inet_ipv4: str, receiver_ipv4: str, prefix: int = 24
) -> list[Record]:
    """The records of the lab's world that no SAMS resource declares."""
    sender_mx, receiver_mx = f"mx.{SENDER_DOMAIN}", f"mx.{RECEIVER_DOMAIN}"
    reverse = reverse_zone(public_ipv4, prefix)
    return [
        Record(LAB_ZONE, NAMESERVER, "A", TTL, records.a(inet_ipv4)),
        Record(LAB_ZONE, SMARTHOST, "A", TTL, records.a(inet_ipv4)),
        Record(LAB_ZONE, BACKUP_SERVER, "A", TTL, records.a(inet_ipv4)),
        Record(LAB_ZONE, S3_SERVER, "A", TTL, records.a(inet_ipv4)),
        Record(LAB_ZONE, MIRROR, "A", TTL, records.a(inet_ipv4)),
        # The provider's reverse DNS (Vultr's ReverseIpv4 for real): PTR = hostname = HELO.
        Record(reverse, ptr(public_ipv4), "PTR", TTL, records.ptr(hostname)),
        Record(reverse, ptr(inet_ipv4), "PTR", TTL, records.ptr(sender_mx)),
        Record(reverse, ptr(receiver_ipv4), "PTR", TTL, records.ptr(receiver_mx)),
        # A remote MTA sending to SAMS from the internet's own address, with SPF for it.
        Record(SENDER_DOMAIN, SENDER_DOMAIN, "MX", TTL, records.mx(10, sender_mx)),
        Record(SENDER_DOMAIN, SENDER_DOMAIN, "TXT", TTL, records.txt(f"v=spf1 ip4:{inet_ipv4} -all")),
        Record(SENDER_DOMAIN, sender_mx, "A", TTL, records.a(inet_ipv4)),
        # The independent receiver SAMS delivers to (lab/receiver.py).
        Record(RECEIVER_DOMAIN, RECEIVER_DOMAIN, "MX", TTL, records.mx(10, receiver_mx)),
        Record(RECEIVER_DOMAIN, RECEIVER_DOMAIN, "TXT", TTL, records.txt(f"v=spf1 ip4:{receiver_ipv4} -all")),
        Record(RECEIVER_DOMAIN, receiver_mx, "A", TTL, records.a(receiver_ipv4)),
    ]


ROOT = "."
# The empty root: SOA and NS only, so every name outside the lab's zones is NXDOMAIN.
ROOT_ZONE = f"""\
$ORIGIN .
$TTL {TTL}
@ IN SOA {NAMESERVER}. hostmaster.{LAB_ZONE}. 1 3600 600 86400 {TTL}
@ IN NS {NAMESERVER}.
"""


def zone_file_name(zone: str) -> str:
    return "root.zone" if zone == ROOT else f"{zone}.zone"


def zones_for_run(
    run: mockrun.Run, *, hostname: str, public_ipv4: str, prefix: int, inet_ipv4: str, receiver_ipv4: str
) -> tuple[tuple[str, str], ...]:
    """(zone, zone file text) for every zone the lab serves: the program's, then the lab's own."""
    # Exactly the zones the Cloudflare component looks up (cloudflare.get_zone_output).
    program_zones = [args["filter"]["name"] for token, args in run.invokes if token == GETZONE]
    published = [records.from_cloudflare(r.inputs, program_zones) for r in run.of_type(DNSRECORD)]
    extra = lab_records(
        hostname=hostname, public_ipv4=public_ipv4, inet_ipv4=inet_ipv4, receiver_ipv4=receiver_ipv4, prefix=prefix
    )
    zones = [*program_zones, LAB_ZONE, SENDER_DOMAIN, RECEIVER_DOMAIN, reverse_zone(public_ipv4, prefix)]
    files = zonefile.zone_files([*published, *extra], zones, nameservers=[NAMESERVER])
    return tuple(sorted({**files, ROOT: ROOT_ZONE}.items()))


def nsd_conf(directory: Path, address: str, zones: Iterable[str]) -> str:
    """nsd.conf for the lab: everything inside `directory`, one listening address."""
    lines = [
        "# SAMS lab DNS: written by lab/dns.py",
        "server:",
        # Only the internet's address of sams-inet, not its loopback.
        f"    ip-address: {address}",
        # The lab has no IPv6.
        "    do-ip6: no",
        # Stay root in the lab's throwaway namespace: the state dir is root's (0700), and the
        # default user switch to `nsd` could not read the zones there.
        '    username: ""',
        '    chroot: ""',
        # Every file of the daemon in the lab's state dir (removed by `lab down`), none in /var/lib/nsd.
        f"    zonesdir: {directory}",
        f"    pidfile: {directory}/nsd.pid",
        f"    xfrdfile: {directory}/xfrd.state",
        f"    xfrdir: {directory}",
        f"    zonelistfile: {directory}/zone.list",
        f"    logfile: {directory}/nsd.log",
        # Zones live in memory only; no nsd.db to write (the default in NSD 4.6, said for clarity).
        '    database: ""',
        # One server process is plenty for a test lab (the default would be one per CPU).
        "    server-count: 1",
        # This NSD plays every DNS server of the lab's internet, resolvers included. Response rate
        # limiting (on in Debian's build: 200 answers/s per client /24, the NXDOMAINs of one zone
        # counted together) dropped or truncated a busy host's RBL lookups under the empty root,
        # which no resolver does to its own clients: Rspamd's scans waited out retries (2-8 s at 16
        # sessions), and after TC answers its resolver spun on an idle DNS-over-TCP connection.
        "    rrl-ratelimit: 0",
        "remote-control:",
        "    control-enable: no",
    ]
    for zone in zones:
        lines += ["zone:", f"    name: {zone}", f"    zonefile: {zone_file_name(zone)}"]
    return "\n".join(lines) + "\n"


# --- shell: start and stop ------------------------------------------------------------------------


def directory(paths: StatePaths) -> Path:
    return paths.run / "dns"


def start(spec: LabSpec, paths: StatePaths, timeout: float = 15.0) -> int | None:
    """Write the zones and nsd.conf, start NSD in sams-inet, wait until every zone answers its SOA.

    Returns NSD's pid, or None when the spec has no zones (a lab without DNS).
    """
    if not spec.dns_zones:
        return None
    d = directory(paths)
    d.mkdir(parents=True, exist_ok=True)
    for zone, text in spec.dns_zones:
        (d / zone_file_name(zone)).write_text(text)
    conf = d / "nsd.conf"
    conf.write_text(nsd_conf(d, spec.inet_ipv4, [zone for zone, _ in spec.dns_zones]))
    run(["nsd-checkconf", str(conf)])
    with open(d / "nsd.out", "wb") as out:
        proc = subprocess.Popen(
            netns_exec(NAMES.ns_inet, ["nsd", "-d", "-c", str(conf)]),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    (d / "nsd.run-pid").write_text(f"{proc.pid}\n")
    wait_answering(spec.inet_ipv4, [zone for zone, _ in spec.dns_zones], timeout, proc, d)
    log.info("lab DNS (nsd pid %d) serves %d zones at %s", proc.pid, len(spec.dns_zones), spec.inet_ipv4)
    return proc.pid


# Run in sams-inet: asks the server for each zone's SOA until all answer authoritatively.
_PROBE = """
import sys, time, dns.message, dns.query, dns.flags
server, deadline, zones = sys.argv[1], time.monotonic() + float(sys.argv[2]), sys.argv[3:]
while zones and time.monotonic() < deadline:
    try:
        answer = dns.query.udp(dns.message.make_query(zones[0], "SOA"), server, timeout=0.5)
        if answer.flags & dns.flags.AA and answer.answer:
            zones.pop(0)
            continue
    except Exception:
        pass
    time.sleep(0.1)
sys.exit("no SOA for " + " ".join(zones) if zones else 0)
"""


def wait_answering(server: str, zones: Sequence[str], timeout: float, proc: subprocess.Popen[bytes], d: Path) -> None:
    probe = run(
        netns_exec(NAMES.ns_inet, [sys.executable, "-c", _PROBE, server, str(timeout), *zones]),
        check=False,
        timeout=timeout + 10,
    )
    if probe.returncode != 0:
        raise LabError(
            f"lab DNS at {server} does not answer ({probe.stderr.decode(errors='replace').strip()}; "
            f"nsd {'runs' if proc.poll() is None else 'exited'})\n--- {d}/nsd.log ---\n{tail(d / 'nsd.log')}"
            f"\n--- {d}/nsd.out ---\n{tail(d / 'nsd.out')}"
        )


def running(paths: StatePaths) -> int | None:
    """NSD's pid if the lab's NSD runs."""
    return daemon_pid(directory(paths) / "nsd.run-pid", b"nsd\0-d\0")


def stop(paths: StatePaths) -> list[str]:
    """Stop NSD (SIGTERM, then SIGKILL); its files go with run/."""
    return stop_daemon(running(paths), "nsd")
