#!/bin/bash
# Emulates the official mariadb/mysql images' entrypoint contract:
#   MYSQL_ROOT_PASSWORD (or MARIADB_ROOT_PASSWORD; required unless
#   MYSQL_ALLOW_EMPTY_PASSWORD / MARIADB_ALLOW_EMPTY_ROOT_PASSWORD or
#   MYSQL_RANDOM_ROOT_PASSWORD / MARIADB_RANDOM_ROOT_PASSWORD), MYSQL_DATABASE,
#   MYSQL_USER + MYSQL_PASSWORD (ALL on MYSQL_DATABASE), and the MARIADB_* twins;
#   <each of these>_FILE naming a file that holds the value;
#   /docker-entrypoint-initdb.d/*.sql|*.sh on the first start; server options as
#   arguments ("mariadbd --innodb-buffer-pool-size=64M"); port 3306 on all addresses.
# No password ever appears on a command line: SQL goes through stdin, the
# client's password through a defaults file on a pipe.
set -Eeo pipefail

DATADIR=/var/lib/mysql
SOCKET=/run/mysqld/mysqld.sock

if [ "${1:0:1}" = '-' ]; then
	set -- mariadbd "$@"
fi
if [ "$1" = 'mysqld' ]; then
	shift
	set -- mariadbd "$@"
fi

if [ "$1" = 'mariadbd' ] && [ "$(id -u)" = '0' ]; then
	mkdir -p "$DATADIR" /run/mysqld
	chown mysql:mysql "$DATADIR" /run/mysqld
	exec setpriv --reuid=mysql --regid=mysql --init-groups "$BASH_SOURCE" "$@"
fi

# The value of MARIADB_<name>, else MYSQL_<name>, else empty; each may instead name a file
# holding the value (<var>_FILE, as the official images read secrets), never both.
env_of() {
	local var file
	for var in "MARIADB_$1" "MYSQL_$1"; do
		file="${var}_FILE"
		if [ -n "${!var:-}" ] && [ -n "${!file:-}" ]; then
			echo "entrypoint: both $var and $file are set; give one" >&2
			exit 1
		fi
		if [ -n "${!var:-}" ]; then
			printf '%s' "${!var}"
			return
		fi
		if [ -n "${!file:-}" ]; then
			cat -- "${!file}"
			return
		fi
	done
}
# A string as an SQL literal's contents (inside '...').
sql_string() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\'/\\\'}
	printf '%s' "$s"
}
# A name as an SQL identifier's contents (inside `...`).
sql_ident() {
	printf '%s' "${1//\`/\`\`}"
}
# A client option file carrying the root password (read from a pipe, never argv).
passfile() {
	local s=$ROOT_PASSWORD
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	printf '[client]\npassword="%s"\n' "$s"
}
# Run SQL from stdin as root over the temporary server's socket.
process_sql() {
	mariadb --defaults-extra-file=<(passfile) --protocol=socket --socket="$SOCKET" -uroot \
		--batch --skip-column-names "$@"
}

if [ "$1" = 'mariadbd' ] && [ ! -d "$DATADIR/mysql" ]; then
	ROOT_PASSWORD=$(env_of ROOT_PASSWORD)
	allow_empty=$(env_of ALLOW_EMPTY_ROOT_PASSWORD)
	allow_empty=${allow_empty:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}
	random_root=$(env_of RANDOM_ROOT_PASSWORD)
	database=$(env_of DATABASE)
	user=$(env_of USER)
	password=$(env_of PASSWORD)
	if [ -z "$ROOT_PASSWORD" ] && [ -z "$allow_empty" ] && [ -z "$random_root" ]; then
		cat >&2 <<-'EOE'
		error: database is uninitialized and password option is not specified
		       You need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD
		       and MARIADB_RANDOM_ROOT_PASSWORD (or their MYSQL_* equivalents)
		EOE
		exit 1
	fi
	if [ -n "$random_root" ]; then
		ROOT_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
		echo "GENERATED ROOT PASSWORD: $ROOT_PASSWORD"
	fi
	if [ "$user" = root ]; then
		echo >&2 "error: MYSQL_USER=root is not valid: root is created from MYSQL_ROOT_PASSWORD"
		exit 1
	fi
	if [ -n "$user" ] && [ -z "$password" ]; then
		echo >&2 "error: MYSQL_USER is set but MYSQL_PASSWORD is not"
		exit 1
	fi

	echo "$0: initializing database files"
	mariadb-install-db --datadir="$DATADIR" --rpm --auth-root-authentication-method=normal \
		--skip-test-db --skip-name-resolve --skip-log-bin \
		--loose-innodb_buffer_pool_load_at_startup=0 --loose-innodb_buffer_pool_dump_at_shutdown=0 >/dev/null

	echo "$0: starting a temporary server (socket only)"
	mariadbd "${@:2}" --skip-networking --socket="$SOCKET" --datadir="$DATADIR" --skip-log-bin \
		--loose-innodb_buffer_pool_load_at_startup=0 --loose-innodb_buffer_pool_dump_at_shutdown=0 &
	temp_pid=$!
	for _ in $(seq 1 300); do
		# root has no password yet
		if mariadb --no-defaults --protocol=socket --socket="$SOCKET" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
			break
		fi
		kill -0 "$temp_pid" 2>/dev/null || { echo >&2 "error: the temporary server exited"; exit 1; }
		sleep 0.1
	done

	root_pw=$(sql_string "$ROOT_PASSWORD")
	{
		echo "SET @@SESSION.SQL_LOG_BIN=0;"
		# mariadb-install-db leaves root@127.0.0.1, root@::1 and root@<hostname> without a password.
		echo "DELETE FROM mysql.global_priv WHERE user = '' OR (user = 'root' AND host <> 'localhost');"
		echo "DELETE FROM mysql.proxies_priv WHERE host <> 'localhost';"
		echo "FLUSH PRIVILEGES;"
		echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$root_pw';"
		echo "CREATE USER 'root'@'%' IDENTIFIED BY '$root_pw';"
		echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
		if [ -n "$database" ]; then
			echo "CREATE DATABASE IF NOT EXISTS \`$(sql_ident "$database")\`;"
		fi
		if [ -n "$user" ]; then
			echo "CREATE USER '$(sql_string "$user")'@'%' IDENTIFIED BY '$(sql_string "$password")';"
			if [ -n "$database" ]; then
				echo "GRANT ALL ON \`$(sql_ident "${database//_/\\_}")\`.* TO '$(sql_string "$user")'@'%';"
			fi
		fi
		echo "FLUSH PRIVILEGES;"
	} | mariadb --no-defaults --protocol=socket --socket="$SOCKET" -uroot --database=mysql

	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
			*.sh)  echo "$0: running $f"; . "$f" ;;
			*.sql) echo "$0: running $f"; process_sql ${database:+--database="$database"} < "$f" ;;
			*)     [ -e "$f" ] && echo "$0: ignoring $f" ;;
		esac
	done

	kill -TERM "$temp_pid"
	wait "$temp_pid" || { echo >&2 "error: the temporary server did not shut down cleanly"; exit 1; }
	unset ROOT_PASSWORD root_pw password
	echo
	echo 'MariaDB init process done. Ready for start up.'
	echo
fi

if [ "$1" = 'mariadbd' ]; then
	shift
	exec mariadbd "$@" --bind-address=0.0.0.0 --port=3306 --socket="$SOCKET" --datadir="$DATADIR"
fi
exec "$@"
