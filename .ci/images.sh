#!/usr/bin/env bash
# Builds the Docker images the tests and docker-compose use, offline.
#
# No container registry is reachable on CI machines, so nothing may be pulled:
#   sluice-redis:local  the host's own redis-server and redis-cli (Debian's
#                       package) with the libraries ldd lists, imported as a
#                       tiny image without a shell.
#
# Idempotent: an image is rebuilt only when missing or when its inputs changed
# (the label org.sluice.source records a hash of them). Needs a running Docker
# engine and the redis-server package on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0 # the preinstalled docker client has no buildx

REDIS_IMAGE_NAME=${REDIS_IMAGE_NAME:-sluice-redis:local}

log() { printf '[images] %s\n' "$*"; }

# image_source IMAGE prints the org.sluice.source label of IMAGE, or nothing.
image_source() {
	docker image inspect -f '{{ index .Config.Labels "org.sluice.source" }}' "$1" 2>/dev/null || true
}

build_redis_image() {
	local server=/usr/bin/redis-server cli=/usr/bin/redis-cli
	for bin in "$server" "$cli"; do
		[[ -x $bin ]] || { echo "images.sh: $bin missing (apt-get install redis-server)" >&2; exit 1; }
	done
	local source
	source=$(cat "$(readlink -f "$server")" "$(readlink -f "$cli")" | sha256sum | cut -c1-16)
	if [[ $(image_source "$REDIS_IMAGE_NAME") == "$source" ]]; then
		log "$REDIS_IMAGE_NAME is up to date ($source)"
		return
	fi

	log "building $REDIS_IMAGE_NAME from $server ($(redis-server --version | cut -d' ' -f3))"
	root=$(mktemp -d) # global: the EXIT trap reads it
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root/usr/bin" "$root/etc" "$root/data" "$root/tmp"
	chmod 1777 "$root/tmp"
	cp -L "$server" "$cli" "$root/usr/bin/" # redis-server is a symlink
	# Shared libraries at their own paths, including the ELF interpreter.
	local lib libs
	libs=$(for bin in "$server" "$cli"; do ldd "$bin"; done)
	if grep -q 'not found' <<<"$libs"; then
		echo "images.sh: missing libraries: $libs" >&2
		exit 1
	fi
	while read -r lib; do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done < <(grep -o '/[^ ]*' <<<"$libs" | sort -u)
	echo 'root:x:0:0:root:/root:/sbin/nologin' >"$root/etc/passwd"

	# Only ENTRYPOINT holds the binary, so testcontainers options that replace
	# CMD keep working (they must re-add --protected-mode no, though).
	tar -C "$root" -c . | docker import \
		-c 'ENTRYPOINT ["/usr/bin/redis-server"]' \
		-c 'CMD ["--protected-mode","no","--bind","0.0.0.0","--save",""]' \
		-c 'EXPOSE 6379' \
		-c 'WORKDIR /data' \
		-c "LABEL org.sluice.source=$source" \
		- "$REDIS_IMAGE_NAME" >/dev/null

	# Smoke test: the image starts and answers PING.
	local ctr ok=
	ctr=$(docker run -d --rm "$REDIS_IMAGE_NAME")
	for _ in $(seq 50); do
		if [[ $(docker exec "$ctr" /usr/bin/redis-cli ping 2>/dev/null) == PONG ]]; then
			ok=1
			break
		fi
		sleep 0.1
	done
	docker rm -f "$ctr" >/dev/null
	[[ -n $ok ]] || { echo "images.sh: $REDIS_IMAGE_NAME does not answer PING" >&2; exit 1; }
	log "built $REDIS_IMAGE_NAME ($(docker image inspect -f '{{.Size}}' "$REDIS_IMAGE_NAME" | numfmt --to=iec))"
}

build_redis_image

# ---------------------------------------------------------------------------
# LATER: the sluice gateway image (sluice:local) is built here from the
# top-level Dockerfile, once it exists. Offline: build the binary on the host
# (CGO_ENABLED=0 go build ./cmd/sluice), then e.g.
#   docker build --target prebuilt --build-arg RUNTIME_IMAGE=scratch -t sluice:local .
# (legacy builder, DOCKER_BUILDKIT=0; see shared/DOCKER-HERE.md).
# ---------------------------------------------------------------------------
