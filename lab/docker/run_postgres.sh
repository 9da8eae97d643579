#!/usr/bin/env bash
# Start the SAMS PostgreSQL container on a (lab) mail host, the way the product
# runs it: host networking, data in /opt/postgres/data, WAL archive in
# /opt/postgres/wal_archive. Runs *on the mail host* (inside the nspawn
# container in the lab), as root, with dockerd running.
#
# Usage: run_postgres.sh [IMAGE_TARBALL]
#   IMAGE_TARBALL  `docker load` it first when the image is not present yet
#                  (output of build_postgres_image.sh).
# Env:
#   POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (host path)   required
#   IMAGE        default sams/postgres:17-trixie (prod: postgres:17-alpine)
#   PG_LISTEN    listen_addresses, default 127.0.0.1 (later: 127.0.0.1,<wg ip>)
#   PG_ROOT      default /opt/postgres
#   NAME         container name, default postgres
# Prints the seconds from `docker run` to "accepting connections".
set -euo pipefail

image="${IMAGE:-sams/postgres:17-trixie}"
listen="${PG_LISTEN:-127.0.0.1}"
root="${PG_ROOT:-/opt/postgres}"
name="${NAME:-postgres}"
pg_uid=70 # postgres in postgres:17-alpine and in sams/postgres:17-trixie

if ! docker image inspect "$image" >/dev/null 2>&1; then
	if [ -n "${1:-}" ]; then
		docker load -i "$1"
	else
		echo "image $image not present and no tarball given" >&2
		exit 1
	fi
fi

secret_args=()
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
	secret_args=(-v "$POSTGRES_PASSWORD_FILE:/run/secrets/postgres_password:ro"
		-e POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password)
elif [ -n "${POSTGRES_PASSWORD:-}" ]; then
	secret_args=(-e POSTGRES_PASSWORD)
else
	echo "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2
	exit 1
fi

# The entrypoint chowns the data dir itself; the archive dir it does not know
# about, so it must be writable by uid 70 beforehand.
install -d -m 0700 -o "$pg_uid" -g "$pg_uid" "$root/data" "$root/wal_archive"

# cp to a temporary name then mv: a reader of the archive (backup job) never
# sees a half-copied segment; `test ! -f` refuses to overwrite (PostgreSQL docs).
archive="$root/wal_archive"
archive_command="test ! -f $archive/%f && cp %p $archive/.%f.tmp && mv $archive/.%f.tmp $archive/%f"

t0=$(date +%s%N)
docker run -d --name "$name" \
	--network host \
	--restart unless-stopped \
	"${secret_args[@]}" \
	-v "$root/data:/var/lib/postgresql/data" \
	-v "$archive:$archive" \
	"$image" \
	-c "listen_addresses=$listen" \
	-c archive_mode=on \
	-c "archive_command=$archive_command" >/dev/null

# the entrypoint's init-time server listens on no TCP address, so this only
# succeeds once the real server is up
until pg_isready -q -h 127.0.0.1 -p 5432 -U postgres -d postgres; do
	if [ "$(docker inspect -f '{{.State.Running}}' "$name")" != true ]; then
		docker logs "$name" >&2
		exit 1
	fi
	sleep 0.05
done
t1=$(date +%s%N)
echo "docker run -> accepting connections: $(((t1 - t0) / 1000000)) ms"
