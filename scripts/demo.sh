#!/usr/bin/env bash
# demo.sh: a DNS-over-TLS upstream with a throwaway CA on loopback, ./coredns
# with dotstub in front of it, a few queries over UDP and TCP, the metrics;
# then it stops everything it started. Needs no internet.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${DEMO_PORT:-5300}
metrics=${DEMO_METRICS_PORT:-9253}
work=$(mktemp -d)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

waitfor() { # waitfor DESCRIPTION COMMAND...: up to 10 s
	for _ in $(seq 100); do "${@:2}" && return 0; sleep 0.1; done
	echo "demo: $1 did not come up" >&2
	return 1
}

./dotupstream -dir "$work" >"$work/upstream.log" 2>&1 &
pids+=($!)
waitfor "the upstream" test -s "$work/addr"
upstream=$(cat "$work/addr")
cat "$work/upstream.log"

cat >"$work/Corefile" <<CONF
.:$port {
    bind 127.0.0.1
    errors
    log
    prometheus 127.0.0.1:$metrics
    dotstub . tls://${upstream%:*}%dns.test:${upstream##*:} {
        tls $work/ca.pem
        pin_sha256 $(cat "$work/leaf.pin") $(cat "$work/ca.pin")
    }
}
wrongpin.test:$port {
    bind 127.0.0.1
    errors
    dotstub . tls://${upstream%:*}%dns.test:${upstream##*:} {
        tls $work/ca.pem
        pin_sha256 $(head -c 32 /dev/urandom | base64)
    }
}
CONF
echo "--- Corefile"
cat "$work/Corefile"

./coredns -conf "$work/Corefile" >"$work/coredns.log" 2>&1 &
pids+=($!)
waitfor "coredns" grep -q '^CoreDNS-' "$work/coredns.log"

q() { # q ARGS...: one query; its header and the first answers, shortened
	echo "--- kdig $*"
	kdig @127.0.0.1 -p "$port" +noall +header +answer "$@" | awk 'NF && n++ < 5 { print substr($0, 1, 110) }'
}
q www.example.org A
q +tcp www.example.org AAAA
q nx.example.org A
q +dnssec www.example.org A
q +ignore big.example.org TXT
q +tcp big.example.org TXT
q www.wrongpin.test A

echo "--- coredns log"
cat "$work/coredns.log"
echo "--- metrics"
curl -fsS "http://127.0.0.1:$metrics/metrics" | grep '^coredns_dotstub' | grep -v '_bucket' || true
