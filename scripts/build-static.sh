#!/usr/bin/env bash
# build-static.sh [OUT] builds CoreDNS with dotstub (./cmd/coredns) into OUT
# (./coredns by default) as one static binary: no cgo, no dynamic loader, no
# libc, so that it runs on an image with nothing else in it. The Dockerfile's
# build stage runs this script, and cmd/coredns/static_test.go runs it too and
# checks what it wrote.
#
# The version flags are the Makefile's (LDFLAGS); VERSION and COMMIT may be set
# from outside, as the Dockerfile does, where there is no .git to ask.
set -euo pipefail
out=${1:-coredns}
case $out in
/*) ;;
*) out=$PWD/$out ;;
esac
cd "$(dirname "$0")/.."
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COMMIT -X main.version=$VERSION" \
	-o "$out" ./cmd/coredns
