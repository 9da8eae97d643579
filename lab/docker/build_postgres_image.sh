#!/usr/bin/env bash
# Build the lab's PostgreSQL 17 image `sams/postgres:17-trixie` without any
# container registry and without a Docker daemon:
#
#   1. mmdebstrap (variant "essential", no apt in the image) a Debian trixie
#      tree with postgresql-17 from the Debian mirror, straight into a tar;
#   2. that tar is the image's single layer; the script writes the image
#      config (ENV/ENTRYPOINT/CMD/STOPSIGNAL/VOLUME/EXPOSE like the official
#      postgres image) and manifest.json around it, giving a `docker save`
#      style archive that `docker load -i` accepts.
#
# Usage: build_postgres_image.sh [OUTPUT.tar]
#   OUTPUT   default: ./sams-postgres-17-trixie.tar
# Env:
#   MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   TAG      image name (default sams/postgres:17-trixie)
#   SUITE    Debian suite (default trixie)
#   WITH_JIT 1 keeps LLVM JIT (+~150 MiB); default 0 leaves it out
# Needs: root (or a working unshare mode for mmdebstrap), mmdebstrap,
#   sha256sum, GNU tar. Runs on the lab's build machine (Debian 12 or 13).
# Load it: docker load -i OUTPUT.tar   (on the host, or inside the nspawn
#   container after copying/binding the file in).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${1:-./sams-postgres-17-trixie.tar}")"
mirror="${MIRROR:-http://deb.debian.org/debian}"
tag="${TAG:-sams/postgres:17-trixie}"
suite="${SUITE:-trixie}"
entrypoint="$here/docker-entrypoint.sh"
pg_major=17

[ -r "$entrypoint" ] || {
	echo "missing $entrypoint" >&2
	exit 1
}
command -v mmdebstrap >/dev/null || {
	echo "mmdebstrap not installed (apt-get install mmdebstrap)" >&2
	exit 1
}

work="$(mktemp -d "${TMPDIR:-/var/tmp}/sams-pgimg.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/image"
layer="$work/layer.tar"

# mmdebstrap runs each hook with `sh -c HOOK exec TREE`: TREE is "$1" inside
# the hook, and the hook sees this script's exported environment.
export PG_MAJOR="$pg_major"

# uid/gid 70 = the postgres user of postgres:17-alpine, so that ownership of
# the bind-mounted /opt/postgres/{data,wal_archive} is the same in lab and prod.
# postgresql-common's postinst only runs adduser when `getent passwd postgres`
# fails, so pre-seeding the account pins the ids.
# shellcheck disable=SC2016  # "$1" is expanded by the hook's shell
essential_hook='set -e
grep -q "^postgres:" "$1/etc/group" || echo "postgres:x:70:" >>"$1/etc/group"
grep -q "^postgres:" "$1/etc/passwd" || echo "postgres:x:70:70:PostgreSQL administrator:/var/lib/postgresql:/bin/bash" >>"$1/etc/passwd"
if [ -e "$1/etc/shadow" ] && ! grep -q "^postgres:" "$1/etc/shadow"; then echo "postgres:*:19000:0:99999:7:::" >>"$1/etc/shadow"; fi
if [ -e "$1/etc/gshadow" ] && ! grep -q "^postgres:" "$1/etc/gshadow"; then echo "postgres:!::" >>"$1/etc/gshadow"; fi'

# The image must not carry a cluster, a shared snakeoil key, or caches.
# listen_addresses='*' in the sample mirrors the official image (so a fresh
# initdb'ed cluster listens everywhere unless `-c listen_addresses=` is given).
# shellcheck disable=SC2016  # "$1" and "$PG_MAJOR" are expanded by the hook's shell
customize_hook='set -e
rm -rf "$1"/etc/postgresql/*/main "$1"/var/lib/postgresql/*/main "$1"/var/log/postgresql/*
rm -f "$1"/etc/ssl/private/ssl-cert-snakeoil.key "$1"/etc/ssl/certs/ssl-cert-snakeoil.pem
sample="$1/usr/share/postgresql/$PG_MAJOR/postgresql.conf.sample"
sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = \x27*\x27!" "$sample"
grep -q "^listen_addresses = .\*." "$sample"
mkdir -p "$1"/docker-entrypoint-initdb.d "$1"/var/lib/postgresql/data "$1"/var/run/postgresql
chown 70:70 "$1"/var/lib/postgresql "$1"/var/lib/postgresql/data "$1"/var/run/postgresql
chmod 0700 "$1"/var/lib/postgresql/data
chmod 03775 "$1"/var/run/postgresql
chmod 0755 "$1"/usr/local/bin/docker-entrypoint.sh
rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*.log "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old
rm -f "$1"/etc/machine-id "$1"/var/lib/dbus/machine-id'

# JIT: postgresql-17 hard-depends on libllvm19 (~150 MiB with libz3). With
# WITH_JIT=0 (default) the LLVM/z3 libraries and llvmjit.so are not unpacked;
# PostgreSQL then silently runs without JIT (pg_jit_available() = false), as
# documented for a missing jit_provider. WITH_JIT=1 keeps them.
slim_opts=()
if [ "${WITH_JIT:-0}" != 1 ]; then
	slim_opts=(
		--dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/libLLVM*'
		--dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/libz3*'
		--dpkgopt="path-exclude=/usr/lib/postgresql/$pg_major/lib/llvmjit*"
		--dpkgopt="path-exclude=/usr/lib/postgresql/$pg_major/lib/bitcode/*"
	)
fi

start=$(date +%s)
# variant essential: Essential:yes packages only (no apt), --include pulls
# postgresql-17 and its dependencies with apt run from outside the tree.
# path-exclude: no docs/man/translations (copyright files are kept).
mmdebstrap \
	--variant=essential \
	--include="postgresql-$pg_major,tzdata" \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/lintian/*' \
	"${slim_opts[@]}" \
	--essential-hook="$essential_hook" \
	--customize-hook="copy-in $entrypoint /usr/local/bin" \
	--customize-hook="$customize_hook" \
	--skip=output/dev \
	--skip=output/mknod \
	--format=tar \
	"$suite" "$layer" "$mirror"

layer_sha="$(sha256sum "$layer" | cut -d' ' -f1)"
mkdir -p "$work/image/$layer_sha"
mv "$layer" "$work/image/$layer_sha/layer.tar"

created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
# Same config keys as postgres:17-alpine (docker inspect): the entrypoint
# runs as root and drops to postgres itself, hence no USER.
config="$(
	cat <<EOF
{"architecture":"amd64","os":"linux","created":"$created",
"config":{
 "Env":["PATH=/usr/lib/postgresql/$pg_major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8","PG_MAJOR=$pg_major","PGDATA=/var/lib/postgresql/data"],
 "Entrypoint":["docker-entrypoint.sh"],
 "Cmd":["postgres"],
 "ExposedPorts":{"5432/tcp":{}},
 "Volumes":{"/var/lib/postgresql/data":{}},
 "StopSignal":"SIGINT",
 "WorkingDir":"/",
 "Labels":{"org.opencontainers.image.title":"sams/postgres",
           "org.opencontainers.image.description":"Debian $suite postgresql-$pg_major, lab stand-in for postgres:$pg_major-alpine"}},
"rootfs":{"type":"layers","diff_ids":["sha256:$layer_sha"]},
"history":[{"created":"$created","created_by":"lab/docker/build_postgres_image.sh: mmdebstrap --variant=essential $suite postgresql-$pg_major"}]}
EOF
)"
printf '%s\n' "$config" >"$work/config.json"
config_sha="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
mv "$work/config.json" "$work/image/$config_sha.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' \
	"$config_sha" "$tag" "$layer_sha" >"$work/image/manifest.json"

mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$work/image" -cf "$out.tmp" .
mv "$out.tmp" "$out"
end=$(date +%s)

echo "image $tag -> $out"
echo "layer sha256:$layer_sha ($(du -h "$work/image/$layer_sha/layer.tar" | cut -f1) uncompressed)"
echo "build time: $((end - start)) s"
