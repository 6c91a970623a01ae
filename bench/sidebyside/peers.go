package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
)

// A peer is one forwarder under test. Its config is a template over conf;
// its command runs in the foreground.
type peer struct {
	name    string
	file    string   // config file name
	conf    string   // template of the config
	cmd     []string // command line; "{{bin}}" and "{{conf}}" are replaced, then each is a template of conf
	pkg     string   // Debian package, for the version line
	tcpOnly bool     // takes TCP clients only: a byte-level TCP-to-TLS proxy
}

// conf is what a peer's config template sees.
type conf struct {
	Port     int    // where the peer serves UDP and TCP
	Upstream string // host:port of the DoT upstream, or of the relay in front of it
	UpHost   string
	UpPort   string
	Dir      string // work directory: ca.pem, cert.pem, key.pem, zone.db
	Pprof    string // host:port for the pprof plugin, with -profile; "" without
}

var peers = []peer{
	{name: "dotstub", file: "Corefile.dotstub", cmd: corednsCmd, conf: corefile(dotstubStanza)},
	{name: "forward", file: "Corefile.forward", cmd: corednsCmd, conf: corefile(forwardStanza)},
	// dotstub and forward behind plugins that a cluster's Corefile puts
	// ahead of its forwarder in the chain (errors, prometheus, loadbalance;
	// not cache, which would answer the benchmark's repeated names itself):
	// each adds its frame to the stack of CoreDNS's per-query goroutine.
	{name: "dotstub chained", file: "Corefile.dotstub-chained", cmd: corednsCmd, conf: corefile(clusterChain + dotstubStanza)},
	{name: "forward chained", file: "Corefile.forward-chained", cmd: corednsCmd, conf: corefile(clusterChain + forwardStanza)},
	// Not a forwarder: CoreDNS answering from the zone itself, on the same
	// server path as dotstub and forward. Its CPU per query is the floor
	// under any CoreDNS plugin.
	{name: "CoreDNS file (no upstream)", file: "Corefile.floor", cmd: corednsCmd, conf: corefile("    file {{.Dir}}/zone.db bench.test\n")},
	{name: "unbound", file: "unbound.conf", pkg: "unbound", cmd: []string{"unbound", "-d", "-c", "{{conf}}"}, conf: `server:
    interface: 127.0.0.1@{{.Port}}
    port: {{.Port}}
    do-ip6: no
    num-threads: 2
    so-reuseport: yes
    chroot: ""
    username: ""
    directory: "{{.Dir}}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    tls-cert-bundle: "{{.Dir}}/ca.pem"
    module-config: "iterator"
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    cache-min-ttl: 0
    msg-cache-size: 1m
    rrset-cache-size: 1m
    prefetch: no
    serve-expired: no
    local-zone: "test." nodefault
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-tls-upstream: yes
    forward-addr: {{.UpHost}}@{{.UpPort}}#dns.test
`},
	{name: "stubby", file: "stubby.yml", pkg: "stubby", cmd: []string{"stubby", "-C", "{{conf}}"}, conf: `resolution_type: GETDNS_RESOLUTION_STUB
dns_transport_list:
  - GETDNS_TRANSPORT_TLS
tls_authentication: GETDNS_AUTHENTICATION_REQUIRED
tls_ca_file: "{{.Dir}}/ca.pem"
tls_query_padding_blocksize: 0
edns_client_subnet_private: 0
round_robin_upstreams: 1
idle_timeout: 10000
appdata_dir: "{{.Dir}}/stubby-appdata"
listen_addresses:
  - 127.0.0.1@{{.Port}}
upstream_recursive_servers:
  - address_data: {{.UpHost}}
    tls_port: {{.UpPort}}
    tls_auth_name: "dns.test"
`},
	{name: "dnsdist", file: "dnsdist.conf", pkg: "dnsdist", cmd: []string{"dnsdist", "--supervised", "--disable-syslog", "-C", "{{conf}}"}, conf: dnsdistConf("")},
	{name: "dnsdist maxInFlight=500", file: "dnsdist-inflight.conf", pkg: "dnsdist", cmd: []string{"dnsdist", "--supervised", "--disable-syslog", "-C", "{{conf}}"}, conf: dnsdistConf(", maxInFlight=500")},

	// The byte-level proxies the design notes measured, TCP in and TLS out,
	// each client connection with an upstream connection of its own; they
	// read no DNS, so they take TCP clients only. Each verifies the
	// upstream's chain against the bench CA and its name.
	{name: "nginx stream proxy_ssl", file: "nginx.conf", pkg: "nginx-light", tcpOnly: true,
		cmd: []string{"nginx", "-c", "{{conf}}", "-p", "{{.Dir}}", "-e", "{{.Dir}}/nginx-error.log"}, conf: `load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
pid {{.Dir}}/nginx.pid;
events {
    worker_connections 4096;
}
stream {
    server {
        listen 127.0.0.1:{{.Port}};
        proxy_pass {{.Upstream}};
        proxy_ssl on;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {{.Dir}}/ca.pem;
        proxy_ssl_name dns.test;
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;
    }
}
`},
	{name: "socat", file: "socat.args", pkg: "socat", tcpOnly: true, cmd: []string{"socat",
		"TCP-LISTEN:{{.Port}},bind=127.0.0.1,reuseaddr,fork",
		"OPENSSL:{{.Upstream}},cafile={{.Dir}}/ca.pem,commonname=dns.test,verify=1"}},
	{name: "Python asyncio proxy", file: "tlsproxy.conf", tcpOnly: true, cmd: []string{"python3", "{{bin}}/tlsproxy.py", "{{conf}}"}, conf: `listen=127.0.0.1:{{.Port}}
upstream={{.Upstream}}
ca={{.Dir}}/ca.pem
name=dns.test
`},
}

func dnsdistConf(extra string) string {
	return `setSecurityPollSuffix("")
setLocal("127.0.0.1:{{.Port}}", {reusePort=true})
addLocal("127.0.0.1:{{.Port}}", {reusePort=true})
setMaxTCPClientThreads(2)
newServer({address="{{.Upstream}}", tls="openssl", subjectName="dns.test",
           caStore="{{.Dir}}/ca.pem", validateCertificates=true,
           checkName="bench.test.", checkType="SOA"` + extra + `})
`
}

// upstreamConf is the upstream: CoreDNS serving the synthetic zone over DoT.
const upstreamConf = `tls://.:{{.Port}} {
    bind 127.0.0.1
    tls {{.Dir}}/cert.pem {{.Dir}}/key.pem
    file {{.Dir}}/zone.db bench.test
}
`

// render writes the config of p for c and returns p's command.
func render(p peer, bin string, c conf) (*exec.Cmd, error) {
	path := filepath.Join(c.Dir, p.file)
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := template.Must(template.New(p.name).Parse(p.conf)).Execute(f, c); err != nil {
		return nil, err
	}
	args := make([]string, len(p.cmd))
	for i, a := range p.cmd {
		var b strings.Builder
		a = strings.NewReplacer("{{bin}}", bin, "{{conf}}", path).Replace(a)
		if err := template.Must(template.New(p.name).Parse(a)).Execute(&b, c); err != nil {
			return nil, err
		}
		args[i] = b.String()
	}
	cmd := command(args[0], args[1:]...)
	cmd.Dir = c.Dir
	return cmd, nil
}

// writeZone writes n names, name0.bench.test to name{n-1}, and a dnsperf
// query file that asks for each once.
func writeZone(dir string, n int) error {
	var zone, queries strings.Builder
	zone.WriteString("$ORIGIN bench.test.\n$TTL 300\n@ IN SOA ns1.bench.test. hostmaster.bench.test. 1 7200 3600 1209600 300\n@ IN NS ns1.bench.test.\nns1 IN A 127.0.0.1\n")
	for i := range n {
		fmt.Fprintf(&zone, "name%d IN A 192.0.2.%d\n", i, i%250+1)
		fmt.Fprintf(&queries, "name%d.bench.test A\n", i)
	}
	if err := os.WriteFile(filepath.Join(dir, "zone.db"), []byte(zone.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "queries.txt"), []byte(queries.String()), 0o644)
}

// The CoreDNS peers: this build, each with a Corefile of one server block.
var corednsCmd = []string{"{{bin}}/coredns", "-conf", "{{conf}}"}

// corefile returns the Corefile template of a CoreDNS peer: the server block
// they all share (and pprof, with -profile), holding plugins.
func corefile(plugins string) string {
	return `.:{{.Port}} {
    bind 127.0.0.1
    multisocket 2
{{- if .Pprof}}
    pprof {{.Pprof}}
{{- end}}
` + plugins + "}\n"
}

const (
	dotstubStanza = `    dotstub . tls://{{.UpHost}}%dns.test:{{.UpPort}} {
        tls {{.Dir}}/ca.pem
    }
`
	forwardStanza = `    forward . tls://{{.Upstream}} {
        tls {{.Dir}}/ca.pem
        tls_servername dns.test
    }
`
	clusterChain = `    errors
    prometheus 127.0.0.1:9253
    loadbalance
`
)

// coredns reports whether p is a CoreDNS build, which can serve pprof.
func (p peer) coredns() bool { return len(p.cmd) > 0 && p.cmd[0] == corednsCmd[0] }
