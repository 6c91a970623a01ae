#!/usr/bin/env bash
# build-static.sh [OUT [PACKAGE]] builds CoreDNS with dotstub (./cmd/coredns,
# or PACKAGE, such as ./cmd/dotpin) into OUT (./coredns by default) as one
# static binary: no cgo, no dynamic loader, no libc, so that it runs on an
# image with nothing else in it. GOARCH picks the architecture. scripts/image.sh
# runs this script for the image and the release, and cmd/coredns/static_test.go
# runs it too and checks what it wrote.
#
# The version flags are the Makefile's (LDFLAGS); VERSION and COMMIT may be set
# from outside, where there is no .git to ask.
set -euo pipefail
out=${1:-coredns}
pkg=${2:-./cmd/coredns}
case $out in
/*) ;;
*) out=$PWD/$out ;;
esac
cd "$(dirname "$0")/.."
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COMMIT -X main.version=$VERSION" \
	-o "$out" "$pkg"
