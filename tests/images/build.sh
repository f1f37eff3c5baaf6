#!/usr/bin/env bash
# Builds svcenv's test images from Debian packages, with no registry pull:
#   svcenv-test/postgres:15  - the official postgres image's env/port contract
#   svcenv-test/redis:7      - the official redis image's contract
#   svcenv-test/es-standin:8 - NOT Elasticsearch: an HTTP stand-in (see es-standin/)
#   svcenv-test/mariadb:10   - the official mariadb/mysql images' contract
# A debootstrap'd rootfs is cached in $SVCENV_CI_CACHE; an image is rebuilt only
# when its recipe (this folder) changes. Prints the image names as env lines.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SVCENV_CI_CACHE:-/var/cache/svcenv-ci}"
suite=bookworm
packages="postgresql-15,postgresql-client-15,redis-server,mariadb-server,mariadb-client,python3,util-linux,procps"
mkdir -p "$cache"

mirror() {
	# The mirror this machine's apt already uses; debootstrap needs a URL.
	local uri
	uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
	[ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
	[ -n "$uri" ] || { echo "build.sh: no Debian mirror configured in apt sources" >&2; exit 1; }
	echo "$uri"
}

base_key=$(printf '%s %s v2' "$suite" "$packages" | sha256sum | cut -c1-12)
base_tar="$cache/rootfs-$base_key.tar"
base_image="svcenv-test/base:$suite-$base_key"

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
	if [ ! -s "$base_tar" ]; then
		command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is not installed" >&2; exit 1; }
		root=$(mktemp -d /var/tmp/svcenv-rootfs.XXXXXX)
		trap 'rm -rf "$root"' EXIT
		echo "build.sh: debootstrap $suite ($packages) ..." >&2
		debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$(mirror)" >"$cache/debootstrap.log" 2>&1 \
			|| { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }
		rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
		tar -C "$root" -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
		rm -rf "$root"
		trap - EXIT
	fi
	docker import "$base_tar" "$base_image" >/dev/null
fi

build() {
	local name=$1 tag=$2 dir="$here/$1" key
	key=$( (cd "$dir" && cat $(ls | sort) ; echo "$base_image") | sha256sum | cut -c1-16)
	if [ "$(docker image inspect -f '{{index .Config.Labels "svcenv.recipe"}}' "$tag" 2>/dev/null)" != "$key" ]; then
		echo "build.sh: building $tag" >&2
		docker build -q --build-arg BASE="$base_image" --label "svcenv.recipe=$key" -t "$tag" "$dir" >/dev/null
	fi
}
build postgres svcenv-test/postgres:15
build redis svcenv-test/redis:7
build es-standin svcenv-test/es-standin:8
build mariadb svcenv-test/mariadb:10
docker image prune -f --filter label=svcenv.recipe >/dev/null 2>&1 || true

echo "SVCENV_POSTGRES_IMAGE=svcenv-test/postgres:15"
echo "SVCENV_REDIS_IMAGE=svcenv-test/redis:7"
echo "SVCENV_ELASTICSEARCH_IMAGE=svcenv-test/es-standin:8"
echo "SVCENV_MYSQL_IMAGE=svcenv-test/mariadb:10"
