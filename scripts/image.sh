#!/usr/bin/env bash
# image.sh builds the container image of CoreDNS with dotstub, one per
# architecture, from the Dockerfile, with podman (or docker when that is what
# the machine has). `make image` and `make release` run it, and so does the
# image test (deploy/image_test.go), so the image tested is the image shipped.
#
# It needs no registry: the base is scratch (BASE to change it), and the
# context it builds from holds all the image needs, made here:
#   linux-ARCH/coredns, linux-ARCH/dotpin   static binaries (scripts/build-static.sh)
#   rootfs/etc/passwd, rootfs/etc/group     root and nonroot (65532), as distroless has them
#   rootfs/etc/ssl/certs/ca-certificates.crt  this machine's CA bundle (Debian's ca-certificates)
# coredns carries the file capability cap_net_bind_service=+ep, so that it
# binds port 53 as user 65532 with no ambient capability (as under Kubernetes);
# setting it takes root.
#
# Environment:
#   IMAGE    name, default dotstub/coredns-dotstub; tagged VERSION-ARCH for each
#            architecture, and VERSION as well for the host's
#   ARCHS    architectures, default the host's (e.g. "amd64 arm64")
#   VERSION, COMMIT  as the Makefile stamps them (from git by default)
#   BASE     base image, default scratch
#   ENGINE   podman or docker, default the first found
#   ENGINE_FLAGS  global flags for the engine, e.g. --storage-driver vfs
#   SAVE_DIR if set, each architecture's image is also saved there as an OCI
#            archive, coredns-dotstub_VERSION_linux_ARCH.oci.tar
#   BIN_DIR  if set, the binaries are taken from BIN_DIR/coredns_VERSION_linux_ARCH
#            and BIN_DIR/dotpin_VERSION_linux_ARCH (scripts/release.sh builds
#            them) instead of built here
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-dotstub/coredns-dotstub}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
host=$(go env GOARCH)
ARCHS=${ARCHS:-$host}
BASE=${BASE:-scratch}
if [ -z "${ENGINE:-}" ]; then
	ENGINE=$(command -v podman || command -v docker || true)
	[ -n "$ENGINE" ] || { echo "image.sh: neither podman nor docker found (Debian: apt-get install podman runc)" >&2; exit 1; }
fi
read -r -a flags <<<"${ENGINE_FLAGS:-}"
engine() { "$ENGINE" "${flags[@]}" "$@"; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
command -v setcap >/dev/null || { echo "image.sh: setcap not found (Debian: apt-get install libcap2-bin)" >&2; exit 1; }
bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || { echo "image.sh: no CA bundle at $bundle (Debian: apt-get install ca-certificates)" >&2; exit 1; }

ctx=$(mktemp -d)
trap '$sudo rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/etc/ssl/certs"
cp "$bundle" "$ctx/rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/rootfs/etc/group"
cp Dockerfile "$ctx/"

for arch in $ARCHS; do
	mkdir -p "$ctx/linux-$arch"
	for cmd in coredns dotpin; do
		if [ -n "${BIN_DIR:-}" ]; then
			cp "$BIN_DIR/${cmd}_${VERSION}_linux_$arch" "$ctx/linux-$arch/$cmd"
		else
			GOARCH=$arch VERSION=$VERSION COMMIT=$COMMIT scripts/build-static.sh "$ctx/linux-$arch/$cmd" "./cmd/$cmd"
		fi
	done
	$sudo setcap cap_net_bind_service=+ep "$ctx/linux-$arch/coredns"
done

tags=()
for arch in $ARCHS; do
	tag="$IMAGE:$VERSION-$arch"
	engine build --platform "linux/$arch" --build-arg BASE="$BASE" \
		--build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
		-t "$tag" "$ctx"
	tags+=("$tag")
	if [ -n "${SAVE_DIR:-}" ]; then
		mkdir -p "$SAVE_DIR"
		out="$SAVE_DIR/coredns-dotstub_${VERSION}_linux_${arch}.oci.tar"
		rm -f "$out"
		if [ "$(basename "$ENGINE")" = podman ]; then
			engine save --format oci-archive -o "$out" "$tag"
		else
			engine save -o "$out" "$tag" # docker: its own archive format, which docker load and podman load read
		fi
	fi
done

# VERSION alone names the image for this machine's architecture. (A manifest
# list of several is made where they are pushed: a local one trips up podman
# 4.3's image listing.)
if [[ " $ARCHS " == *" $host "* ]]; then
	engine tag "$IMAGE:$VERSION-$host" "$IMAGE:$VERSION"
fi
echo "built ${tags[*]}"
