#!/usr/bin/env bash
# Entrypoint of the lab image sams/postgres:17-trixie.
#
# A compact re-implementation of the official postgres image's
# docker-entrypoint.sh (docker-library/postgres, 17 branch) on top of Debian
# trixie's postgresql-17 package, so that a stack written for
# `postgres:17-alpine` behaves the same when it is given this image:
#   * same env: POSTGRES_PASSWORD[_FILE], POSTGRES_USER[_FILE] (default
#     postgres), POSTGRES_DB[_FILE] (default $POSTGRES_USER),
#     POSTGRES_INITDB_ARGS, POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD,
#     PGDATA (default /var/lib/postgresql/data);
#   * same behaviour: started as root it creates/chowns $PGDATA and re-executes
#     itself as the postgres user (uid/gid 70, as in the alpine image); when
#     $PGDATA has no PG_VERSION it runs initdb, appends
#     `host all all all <auth>` to pg_hba.conf, runs a socket-only temporary
#     server for POSTGRES_DB and /docker-entrypoint-initdb.d/*, then stops it;
#   * a first argument starting with '-' is taken as options to `postgres`,
#     so `docker run IMAGE -c listen_addresses=127.0.0.1` works.
set -Eeuo pipefail

# usage: file_env VAR [DEFAULT]  -- VAR or VAR_FILE (docker secrets), not both
file_env() {
	local var="$1" fileVar="${1}_FILE" def="${2:-}" val
	if [ -n "${!var:-}" ] && [ -n "${!fileVar:-}" ]; then
		printf >&2 'error: both %s and %s are set (but are exclusive)\n' "$var" "$fileVar"
		exit 1
	fi
	val="$def"
	if [ -n "${!var:-}" ]; then
		val="${!var}"
	elif [ -n "${!fileVar:-}" ]; then
		val="$(<"${!fileVar}")"
	fi
	export "$var"="$val"
	unset "$fileVar"
}

docker_setup_env() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=}"
	: "${PGDATA:=/var/lib/postgresql/data}"
	export PGDATA
	DATABASE_ALREADY_EXISTS=
	if [ -s "$PGDATA/PG_VERSION" ]; then
		DATABASE_ALREADY_EXISTS=true
	fi
}

docker_create_db_directories() {
	local user
	user="$(id -u)"
	mkdir -p "$PGDATA"
	chmod 00700 "$PGDATA" || :
	mkdir -p /var/run/postgresql || :
	chmod 03775 /var/run/postgresql || :
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
		if [ "$user" = 0 ]; then
			find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres: '{}' +
		fi
		chmod 700 "$POSTGRES_INITDB_WALDIR"
	fi
	if [ "$user" = 0 ]; then
		find "$PGDATA" \! -user postgres -exec chown postgres: '{}' +
		find /var/run/postgresql \! -user postgres -exec chown postgres: '{}' +
	fi
}

docker_verify_minimum_env() {
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'EOE'
			Error: Database is uninitialized and superuser password is not specified.
			       You must specify POSTGRES_PASSWORD to a non-empty value for the
			       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".
			       (POSTGRES_HOST_AUTH_METHOD=trust allows all connections without a password;
			       it is NOT recommended.)
		EOE
		exit 1
	fi
	if [ "${#POSTGRES_PASSWORD}" -ge 100 ]; then
		echo >&2 'WARNING: POSTGRES_PASSWORD is 100+ characters; psql may truncate it.'
	fi
}

docker_init_database_dir() {
	local args=()
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		args+=(--waldir "$POSTGRES_INITDB_WALDIR")
	fi
	# POSTGRES_INITDB_ARGS is word-split on purpose, as in the official image.
	# shellcheck disable=SC2086
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
		"${args[@]}" $POSTGRES_INITDB_ARGS
}

pg_setup_hba_conf() {
	local auth
	if [ "$1" = postgres ]; then
		shift
	fi
	# the official image: default is what initdb's password_encryption gives
	auth="${POSTGRES_HOST_AUTH_METHOD:-$(postgres -C password_encryption "$@")}"
	printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
}

docker_temp_server_start() {
	if [ "$1" = postgres ]; then
		shift
	fi
	# socket only: nothing listens on TCP while the cluster is being set up;
	# appended after the user's options so that it wins over theirs.
	set -- "$@" -c listen_addresses='' -p "${PGPORT:-5432}"
	PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -o "$(printf '%q ' "$@")" -w start
}

docker_temp_server_stop() {
	PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -m fast -w stop
}

# usage: docker_process_sql [psql args...] <file
docker_process_sql() {
	local query_runner=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
	if [ -n "$POSTGRES_DB" ]; then
		query_runner+=(--dbname "$POSTGRES_DB")
	fi
	PGHOST='' PGHOSTADDR='' "${query_runner[@]}" "$@"
}

docker_setup_db() {
	local exists
	# the later --dbname wins over the one docker_process_sql adds
	exists="$(docker_process_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<-'EOSQL'
		SELECT 1 FROM pg_database WHERE datname = :'db' ;
	EOSQL
	)"
	if [ -z "$exists" ]; then
		docker_process_sql --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db" ;
		EOSQL
		printf '\n'
	fi
}

docker_process_init_files() {
	local f
	for f in "$@"; do
		case "$f" in
		*.sh)
			if [ -x "$f" ]; then
				echo "$0: running $f"
				"$f"
			else
				echo "$0: sourcing $f"
				# shellcheck disable=SC1090
				. "$f"
			fi
			;;
		*.sql) echo "$0: running $f" && docker_process_sql <"$f" ;;
		*.sql.gz) echo "$0: running $f" && gunzip -c "$f" | docker_process_sql ;;
		*) echo "$0: ignoring $f" ;;
		esac
	done
}

_main() {
	if [ "${1:0:1}" = '-' ]; then
		set -- postgres "$@"
	fi
	if [ "$1" = postgres ]; then
		docker_setup_env
		docker_create_db_directories
		if [ "$(id -u)" = 0 ]; then
			# drop root like gosu/su-exec do in the official images
			exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
		fi
		if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
			docker_verify_minimum_env
			docker_init_database_dir
			pg_setup_hba_conf "$@"
			export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
			docker_temp_server_start "$@"
			if [ "$POSTGRES_DB" != postgres ]; then
				docker_setup_db
			fi
			shopt -s nullglob
			docker_process_init_files /docker-entrypoint-initdb.d/*
			shopt -u nullglob
			docker_temp_server_stop
			unset PGPASSWORD
			echo
			echo 'PostgreSQL init process complete; ready for start up.'
			echo
		else
			echo
			echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
			echo
		fi
	fi
	exec "$@"
}

_main "$@"
