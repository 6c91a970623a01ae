#!/usr/bin/env bash
# run.sh [FLAGS]: the side-by-side benchmark. It installs the peers and dnsperf
# from Debian's packages, builds what it runs into bench/out, and runs
# bench/sidebyside in a private network namespace that has only loopback, so
# no query can leave the machine. FLAGS go to bench/sidebyside (-rounds,
# -duration, -peers, -scenarios, -out).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/need.sh dnsperf:dnsperf unbound:unbound stubby:stubby dnsdist:dnsdist unshare:util-linux ip:iproute2 \
	socat:socat nginx:nginx-light /usr/lib/nginx/modules/ngx_stream_module.so:libnginx-mod-stream python3:python3
mkdir -p bench/out
go build -o bench/out/coredns ./cmd/coredns
go build -o bench/out/dotupstream ./cmd/dotupstream
go build -o bench/out/relay ./bench/relay
go build -o bench/out/sidebyside ./bench/sidebyside
cp bench/sidebyside/tlsproxy.py bench/out/
exec unshare --net bash -c 'ip link set lo up && exec bench/out/sidebyside -bin bench/out "$@"' sidebyside "$@"
