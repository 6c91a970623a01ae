# dotstub: CoreDNS with the dotstub plugin.
#   make build   build ./coredns and ./dotpin
#   make run     build, then serve Corefile.example on 127.0.0.1 (PORT=5300 by default; 53 as root)
#   make test    install what the tests need, vet, staticcheck, every test with -race, then
#                each fuzz target for FUZZTIME (5s)
#   make demo    a local DoT upstream, ./coredns in front, a few queries; no internet
#   make image   the container image for this machine's architecture (ARCHS="amd64 arm64" for both),
#                with podman or docker (scripts/image.sh; ENGINE_FLAGS for the engine's own flags)
#   make release dist/: static coredns and dotpin, and the image as an OCI archive, for linux/amd64
#                and linux/arm64, with SHA256SUMS (scripts/release.sh)
#   make bench   dotstub side by side with forward, Unbound, Stubby, dnsdist, nginx, socat and a Python
#                proxy, against two upstreams (over an hour; BENCHFLAGS="-rounds 1 -upstreams coredns")
#   make profile CPU and allocation profiles of dotstub under the UDP and TCP loads (bench/out/profiles)
#   make bench-failover   dotstub and forward when upstreams die, stall or lag (about 3 minutes)
#   make soak    ./coredns under a steady load for SOAK (10m): memory, descriptors, goroutines
#   make fuzz    each fuzz target for FUZZTIME (10m here), one after another (scripts/fuzz.sh)
#   make clean   remove what the build wrote

GO      ?= go
PORT    ?= 5300
SOAK    ?= 10m
FUZZTIME ?= 5s
COMMIT  := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/coredns/coredns/coremain.GitCommit=$(COMMIT) -X main.version=$(VERSION)

.PHONY: build run test demo image release bench profile bench-failover soak fuzz clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o coredns ./cmd/coredns
	$(GO) build -ldflags "$(LDFLAGS)" -o dotpin ./cmd/dotpin

run: build
	./coredns -conf Corefile.example -dns.port $(PORT)

test:
	scripts/need.sh gcc:gcc promtool:prometheus podman:podman runc:runc setcap:libcap2-bin ip:iproute2 \
		update-ca-certificates:ca-certificates
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 30m ./...
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME)

demo: build
	scripts/need.sh kdig:knot-dnsutils curl:curl
	$(GO) build -o dotupstream ./cmd/dotupstream
	scripts/demo.sh

image:
	scripts/need.sh setcap:libcap2-bin update-ca-certificates:ca-certificates
	scripts/image.sh

release:
	scripts/need.sh setcap:libcap2-bin update-ca-certificates:ca-certificates
	scripts/release.sh

bench:
	bench/run.sh $(BENCHFLAGS)

profile:
	bench/run.sh -peers dotstub -upstreams coredns -scenarios "max throughput" -rounds 1 -duration 20s \
		-profile bench/out/profiles $(BENCHFLAGS)
	@for p in bench/out/profiles/cpu-*.pprof; do echo "== $$p"; \
		$(GO) tool pprof -top -nodecount=25 bench/out/coredns $$p 2>/dev/null | tail -n +5; done

bench-failover:
	mkdir -p bench/out
	$(GO) build -ldflags "$(LDFLAGS)" -o bench/out/coredns ./cmd/coredns
	$(GO) run ./bench/failover $(BENCHFLAGS)

soak: build
	$(GO) build -o dotupstream ./cmd/dotupstream
	$(GO) run ./bench/soak -duration $(SOAK) $(SOAKFLAGS)

# make fuzz FUZZTIME=1m for a shorter run.
fuzz: FUZZTIME = 10m
fuzz:
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -f coredns dotupstream dotpin
	rm -rf bench/out dist
