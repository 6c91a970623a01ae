# CoreDNS with dotstub: static binaries on an empty base, run as a non-root
# user that may still bind port 53. scripts/image.sh (make image, make release)
# assembles the context and builds this file, for each architecture:
#   make image                      this machine's architecture, with podman or docker
#   make image ARCHS="amd64 arm64"  both (only files are copied: no emulation)
# See docs/kubernetes.md, "Container image".

# scratch needs no registry; the context brings the CA bundle and the users.
# BASE=gcr.io/distroless/static-debian12:nonroot builds on distroless instead.
ARG BASE=scratch
FROM ${BASE}
ARG TARGETARCH
ARG VERSION=dev
ARG REVISION=unknown
COPY rootfs/ /
# coredns carries cap_net_bind_service=+ep, set by scripts/image.sh, so that it
# binds port 53 as 65532 where the runtime gives no ambient capability.
COPY linux-${TARGETARCH}/coredns linux-${TARGETARCH}/dotpin /
LABEL org.opencontainers.image.title="coredns-dotstub" \
      org.opencontainers.image.description="CoreDNS with the dotstub plugin: DNS over TLS to authenticated, pinned upstreams" \
      org.opencontainers.image.source="https://github.com/dotstub/dotstub" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
USER 65532:65532
EXPOSE 53/udp 53/tcp 9153
ENTRYPOINT ["/coredns"]
CMD ["-conf", "/etc/coredns/Corefile"]
