#!/bin/bash
# Emulates the official redis image's entrypoint: "redis-server [CONFIG.conf] [ARGS]" or bare
# "--flag ..." / "CONFIG.conf ..." arguments, listening on 6379 on all interfaces, run as user redis.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi
if [ "$1" = 'redis-server' ]; then
	shift
	conf=()
	if [ -n "${1:-}" ] && [ "${1%.conf}" != "$1" ]; then
		conf=("$1")  # redis-server takes a config file only as its first argument
		shift
	fi
	set -- redis-server "${conf[@]}" --bind '* -::*' --protected-mode no --port 6379 --dir /data "$@"
	if [ "$(id -u)" = '0' ]; then
		exec setpriv --reuid=redis --regid=redis --init-groups "$@"
	fi
fi
exec "$@"
