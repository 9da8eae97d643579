"""Debian packages for a step (pure): the one script fragment every packages step runs, so each
installs the same way: only what is missing, no daemon started on its package's default config,
no question asked."""

from __future__ import annotations

from collections.abc import Sequence

from components.remote.steps import INSTALLED_FN

# Debian's hook (invoke-rc.d, deb-systemd-invoke) asking whether a package may start its service.
POLICY_RC_D = "/usr/sbin/policy-rc.d"


def install_missing(packages: Sequence[str], *, debconf: Sequence[str] = ()) -> str:
    """A script fragment installing whichever of `packages` the host lacks (nothing on a host whose
    image has them all); `debconf`: debconf-set-selections lines answered before the install."""
    if not packages:
        raise ValueError("install_missing: no packages")
    preseed = "".join(f'    echo "{line}" | debconf-set-selections\n' for line in debconf)
    checks = "".join(f'installed {p} || missing="$missing {p}"\n' for p in packages)
    return f"""\
{INSTALLED_FN}
missing=""
{checks}if [ -n "$missing" ]; then
{preseed}    apt-get update
    # No daemon starts on its package's default config (nginx's default site on :80, Dovecot on
    # :143, Prometheus on every address): policy-rc.d's 101 ("forbidden") makes the packages' start
    # requests no-ops; each daemon's own step starts it once SAMS's files are in place.
    printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC_D}
    chmod 0755 {POLICY_RC_D}
    trap 'rm -f {POLICY_RC_D}' EXIT
    # A file already where a package has a conffile (one a backup restored before the install, such
    # as certbot's cli.ini) stays as it is, instead of a prompt failing on the closed stdin.
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $missing
    rm -f {POLICY_RC_D}
    trap - EXIT
fi
"""


__all__ = ["POLICY_RC_D", "install_missing"]
