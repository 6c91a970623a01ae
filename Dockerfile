# syntax=docker/dockerfile:1
# CoreDNS with dotstub: a static binary on a distroless base, run as a non-root
# user that may still bind port 53. See docs/kubernetes.md, "Container image":
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse --short HEAD) -t REGISTRY/coredns-dotstub:TAG .

FROM golang:1.26 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
# The same script that cmd/coredns/static_test.go runs and checks.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    VERSION="$VERSION" COMMIT="$COMMIT" scripts/build-static.sh /out/coredns
# A non-root process may bind port 53 only with CAP_NET_BIND_SERVICE, and the
# runtime does not pass an added capability to a non-root process across exec
# (no ambient capabilities), so the file carries it. The base image has no
# setcap, hence here. BuildKit's COPY --from is expected to keep this extended
# attribute (the CoreDNS project's own image relies on it); older builders
# dropped it (moby/moby#38132). Not verified here: see docs/kubernetes.md.
RUN setcap cap_net_bind_service=+ep /out/coredns

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/coredns /coredns
USER 65532:65532
EXPOSE 53/udp 53/tcp 9153
ENTRYPOINT ["/coredns"]
CMD ["-conf", "/etc/coredns/Corefile"]
