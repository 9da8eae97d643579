#!/usr/bin/env bash
# Prove the SAMS PostgreSQL container works, from the mail host (the nspawn
# container in the lab) with the host's psql (postgresql-client-17):
# version 17, listening only where asked, a table can be created, and
# pg_switch_wal() puts the finished segment into the WAL archive.
# Env: PGPASSWORD (required), PG_ROOT (default /opt/postgres).
set -euo pipefail

: "${PGPASSWORD:?set PGPASSWORD}"
export PGPASSWORD
archive="${PG_ROOT:-/opt/postgres}/wal_archive"
q() { psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -XAtc "$1"; }

echo "== TCP listeners on 5432"
ss -Hltn 'sport = :5432'
echo "== version"
q 'SELECT version()'
[ "$(q 'SHOW server_version_num')" -ge 170000 ] && [ "$(q 'SHOW server_version_num')" -lt 180000 ]
echo "== settings"
q "SELECT name || ' = ' || setting FROM pg_settings
   WHERE name IN ('listen_addresses', 'archive_mode', 'archive_command', 'data_directory')
   ORDER BY name"
echo "== table"
q 'CREATE TABLE IF NOT EXISTS lab_probe (id serial PRIMARY KEY, note text, at timestamptz DEFAULT now())'
q "INSERT INTO lab_probe (note) VALUES ('hello from the lab') RETURNING id, note"
echo "== WAL archiving"
seg="$(q 'SELECT pg_walfile_name(pg_current_wal_lsn())')"
q 'SELECT pg_switch_wal()' >/dev/null
for _ in $(seq 1 100); do
	[ -f "$archive/$seg" ] && break
	sleep 0.1
done
ls -l "$archive/$seg"
[ "$(stat -c %s "$archive/$seg")" -eq 16777216 ]
q 'SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver'
echo "OK: PostgreSQL 17 up, table created, $seg archived"
