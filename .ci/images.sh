#!/usr/bin/env bash
# Builds the Docker images the tests and docker-compose use, offline.
#
# No container registry is reachable on CI machines, so nothing may be pulled:
#   sluice-redis:local  the host's own redis-server and redis-cli (Debian's
#                       package) with the libraries ldd lists, imported as a
#                       tiny image without a shell.
#   sluice-prometheus:local  the same from Debian's prometheus package, for
#                       docker-compose's optional monitoring profile; skipped
#                       with a note when prometheus is not installed.
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

# copy_with_libs ROOT BIN... copies each binary into ROOT/usr/bin and the
# shared libraries ldd lists at their own paths, including the ELF
# interpreter.
copy_with_libs() {
	local root=$1 lib libs
	shift
	mkdir -p "$root/usr/bin"
	cp -L "$@" "$root/usr/bin/" # redis-server is a symlink
	libs=$(for bin in "$@"; do ldd "$bin" || true; done)
	if grep -q 'not found' <<<"$libs"; then
		echo "images.sh: missing libraries: $libs" >&2
		exit 1
	fi
	while read -r lib; do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done < <(grep -o '/[^ ]*' <<<"$libs" | sort -u)
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
	copy_with_libs "$root" "$server" "$cli"
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
# sluice:local, the gateway image, from the top-level Dockerfile's offline
# stage: the binary is built here on the host (CGO_ENABLED=0, static), put in
# .ci/build/rootfs with the host's CA certificates, and copied onto scratch.
GATEWAY_IMAGE_NAME=${GATEWAY_IMAGE_NAME:-sluice:local}

build_gateway_image() {
	command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
	local certs=/etc/ssl/certs/ca-certificates.crt
	[[ -r $certs ]] || { echo "images.sh: $certs missing (apt-get install ca-certificates)" >&2; exit 1; }
	local rootfs=.ci/build/rootfs
	mkdir -p "$rootfs/etc/ssl/certs"
	# Build beside the old binary and replace it only when it changed: the
	# build is reproducible (-trimpath), so an unchanged tree keeps its hash.
	CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags='-s -w' -o "$rootfs/sluice.new" ./cmd/sluice
	if cmp -s "$rootfs/sluice.new" "$rootfs/sluice"; then
		rm "$rootfs/sluice.new"
	else
		mv "$rootfs/sluice.new" "$rootfs/sluice"
	fi
	cmp -s "$certs" "$rootfs/etc/ssl/certs/ca-certificates.crt" || cp "$certs" "$rootfs/etc/ssl/certs/ca-certificates.crt"

	local source
	source=$(cat Dockerfile .dockerignore $(find .ci/rootfs "$rootfs" -type f | LC_ALL=C sort) | sha256sum | cut -c1-16)
	if [[ $(image_source "$GATEWAY_IMAGE_NAME") == "$source" ]]; then
		log "$GATEWAY_IMAGE_NAME is up to date ($source)"
		return
	fi
	log "building $GATEWAY_IMAGE_NAME (offline: Dockerfile target prebuilt on scratch)"
	local out old
	old=$(docker image inspect -f '{{.Id}}' "$GATEWAY_IMAGE_NAME" 2>/dev/null || true)
	# The legacy builder's deprecation notice goes to stderr: shown on failure only.
	if ! out=$(docker build -q --target prebuilt --build-arg RUNTIME_IMAGE=scratch \
		--label "org.sluice.source=$source" -t "$GATEWAY_IMAGE_NAME" . 2>&1); then
		echo "$out" >&2
		exit 1
	fi

	# Smoke test: the binary runs in the image, as the image's user.
	out=$(docker run --rm "$GATEWAY_IMAGE_NAME" --help) || { echo "images.sh: $GATEWAY_IMAGE_NAME does not run" >&2; exit 1; }
	grep -q healthcheck <<<"$out" || { echo "images.sh: $GATEWAY_IMAGE_NAME: no healthcheck command" >&2; exit 1; }
	# The replaced image, unless a container still uses it.
	if [[ -n $old && $old != $(docker image inspect -f '{{.Id}}' "$GATEWAY_IMAGE_NAME") ]]; then
		docker image rm "$old" >/dev/null 2>&1 || true
	fi
	log "built $GATEWAY_IMAGE_NAME ($(docker image inspect -f '{{.Size}}' "$GATEWAY_IMAGE_NAME" | numfmt --to=iec))"
}

build_gateway_image

# ---------------------------------------------------------------------------
# sluice-prometheus:local, for `docker compose --profile monitoring up`: the
# host's prometheus (Debian's package: a Go binary linked to libc) with the
# libraries ldd lists, its web assets and deploy/prometheus/prometheus.yml
# (compose mounts that file over it, so edits need no rebuild). Optional: no
# test uses it, so CI does not install prometheus and this step skips.
PROMETHEUS_IMAGE_NAME=${PROMETHEUS_IMAGE_NAME:-sluice-prometheus:local}

build_prometheus_image() {
	local bin=/usr/bin/prometheus web=/usr/share/prometheus/web config=deploy/prometheus/prometheus.yml
	if [[ ! -x $bin ]]; then
		log "skipping $PROMETHEUS_IMAGE_NAME: $bin missing (apt-get install prometheus to build it)"
		return
	fi
	if command -v promtool >/dev/null; then
		promtool check config "$config" >/dev/null || { echo "images.sh: promtool rejects $config" >&2; exit 1; }
	fi
	local source
	source=$( (cat "$bin" "$config" && find "$web" -type f 2>/dev/null | LC_ALL=C sort | xargs -r cat) | sha256sum | cut -c1-16)
	if [[ $(image_source "$PROMETHEUS_IMAGE_NAME") == "$source" ]]; then
		log "$PROMETHEUS_IMAGE_NAME is up to date ($source)"
		return
	fi

	log "building $PROMETHEUS_IMAGE_NAME from $bin ($($bin --version 2>&1 | head -1 | cut -d' ' -f3))"
	proot=$(mktemp -d) # global: the EXIT trap reads it
	trap 'rm -rf "${root:-}" "$proot"' EXIT
	copy_with_libs "$proot" "$bin"
	mkdir -p "$proot/etc/prometheus" "$proot/prometheus" "$proot/tmp" "$proot$(dirname "$web")"
	chmod 1777 "$proot/tmp"
	chown 65534:65534 "$proot/prometheus"
	[[ -d $web ]] && cp -r "$web" "$proot$web"
	cp "$config" "$proot/etc/prometheus/prometheus.yml"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$proot/etc/passwd"

	tar -C "$proot" -c . | docker import \
		-c 'ENTRYPOINT ["/usr/bin/prometheus"]' \
		-c 'CMD ["--config.file=/etc/prometheus/prometheus.yml","--storage.tsdb.path=/prometheus","--web.listen-address=:9090"]' \
		-c 'USER 65534' \
		-c 'EXPOSE 9090' \
		-c 'WORKDIR /prometheus' \
		-c "LABEL org.sluice.source=$source" \
		- "$PROMETHEUS_IMAGE_NAME" >/dev/null

	# Smoke test: the image runs and reads its configuration.
	docker run --rm "$PROMETHEUS_IMAGE_NAME" --version >/dev/null 2>&1 ||
		{ echo "images.sh: $PROMETHEUS_IMAGE_NAME does not run" >&2; exit 1; }
	log "built $PROMETHEUS_IMAGE_NAME ($(docker image inspect -f '{{.Size}}' "$PROMETHEUS_IMAGE_NAME" | numfmt --to=iec))"
}

build_prometheus_image
