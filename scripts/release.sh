#!/usr/bin/env bash
# release.sh writes a release into dist/: static coredns and dotpin for
# linux/amd64 and linux/arm64, the image of each architecture as an OCI
# archive (scripts/image.sh), and SHA256SUMS of them all. The version is
# git describe's: the tag (v0.x.y) on a tagged commit. `make release` runs it;
# docs/development.md says how a release is cut.
#
# Environment: ARCHS (default "amd64 arm64"), and ENGINE, ENGINE_FLAGS, BASE
# and IMAGE as scripts/image.sh takes them.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
ARCHS=${ARCHS:-amd64 arm64}
case $VERSION in
*-dirty) echo "release.sh: the work tree has uncommitted changes ($VERSION); the release is marked dirty" >&2 ;;
esac
rm -rf dist
mkdir -p dist
for arch in $ARCHS; do
	for cmd in coredns dotpin; do
		GOARCH=$arch VERSION=$VERSION COMMIT=$COMMIT scripts/build-static.sh "dist/${cmd}_${VERSION}_linux_$arch" "./cmd/$cmd"
	done
done
ARCHS=$ARCHS VERSION=$VERSION COMMIT=$COMMIT BIN_DIR=dist SAVE_DIR=dist scripts/image.sh
(cd dist && sha256sum -- * >SHA256SUMS && sha256sum -c --quiet SHA256SUMS)
ls -l dist
