# The sluice image: one static binary, /sluice (sluice serve by default; also
# sluice mockvendor, sluice load and sluice healthcheck), run as a non-root
# user, with CA certificates, and no shell.
#
# With a registry (a laptop, most CI):
#   docker build -t sluice:local .
#   -> the last stage, "image": Go builder + distroless static runtime.
#   Base images are build args: GO_IMAGE, RUNTIME_IMAGE (e.g. scratch).
#
# Offline (no registry; what .ci/images.sh does): build the binary on the
# host into .ci/build/rootfs/, then
#   DOCKER_BUILDKIT=0 docker build --target prebuilt --build-arg RUNTIME_IMAGE=scratch -t sluice:local .
#
# The legacy builder runs every stage before the target, so the offline
# stages come first and pull nothing when RUNTIME_IMAGE is scratch. No
# "# syntax=" line: it would pull a frontend image.

ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot
ARG GO_IMAGE=golang:1.26

# runtime: what both final stages share.
FROM ${RUNTIME_IMAGE} AS runtime
USER 65532:65532
EXPOSE 8080
# Liveness of sluice serve on $SLUICE_LISTEN; a mockvendor container sets
# SLUICE_HEALTHCHECK_URL (or overrides the check).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/sluice", "healthcheck"]
ENTRYPOINT ["/sluice"]
CMD ["serve"]

# prebuilt: the offline image, from files .ci/images.sh put in
# .ci/build/rootfs (/sluice and the CA certificates). The [s] lets a legacy
# builder pass this stage where that folder does not exist, on its way to
# "image"; .ci/rootfs (passwd, group) always does.
FROM runtime AS prebuilt
COPY .ci/rootfs/ .ci/build/rootf[s] /

# build: a static binary from source.
FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/sluice ./cmd/sluice

# image: the default target.
FROM runtime AS image
COPY .ci/rootfs/ /
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/sluice /sluice
