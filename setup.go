package dotstub

import (
	"cmp"
	"crypto/tls"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	pkgtls "github.com/coredns/coredns/plugin/pkg/tls"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/pin"
	"github.com/dotstub/dotstub/plugin/upstream"
)

const (
	pluginName   = "dotstub"
	maxUpstreams = 15
)

func init() { plugin.Register(pluginName, setup) }

func setup(c *caddy.Controller) error {
	ds, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	for i, d := range ds {
		if i == len(ds)-1 {
			dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
				d.Next = next
				return d
			})
		} else {
			next := ds[i+1]
			dnsserver.GetConfig(c).AddPlugin(func(plugin.Handler) plugin.Handler {
				d.Next = next
				return d
			})
		}
		c.OnStartup(d.OnStartup)
		c.OnShutdown(d.OnShutdown)
	}
	return nil
}

// parse reads every dotstub stanza of a server block. Each becomes its own
// handler; a query that falls outside one stanza's FROM goes to the next.
func parse(c *caddy.Controller) ([]*Dotstub, error) {
	var ds []*Dotstub
	for c.Next() {
		d, err := parseStanza(c)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	return ds, nil
}

// Upstreams reads the dotstub stanzas at c as CoreDNS does at start-up, with
// every check, and returns their upstreams, not started: for tools, such as
// dotpin check, that need what a Corefile says of each upstream.
func Upstreams(c *caddy.Controller) ([]*upstream.Upstream, error) {
	ds, err := parse(c)
	if err != nil {
		return nil, err
	}
	var out []*upstream.Upstream
	for _, d := range ds {
		out = append(out, d.upstreams...)
	}
	return out, nil
}

// options holds what a stanza says that is only needed to build upstreams;
// zero fields are the pool's defaults (package dot), except where New sets
// them.
type options struct {
	to          []target    // TO, read before the block
	tls         *tls.Config // from the tls option; nil means system roots
	serverName  string      // tls_servername
	id          identity    // pin_sha256, tls_ca and pin_report_only: identity.go
	maxFails    uint32
	healthCheck time.Duration
	probeName   string // health_check's domain
	probeNoRec  bool   // health_check's no_rec
	expire      time.Duration
	maxAge      time.Duration
	maxIdle     int
	maxConns    int
	maxInflight int
	source      net.IP // source_address
}

// target is one TO argument, parsed.
type target struct {
	to, addr, serverName string // as configured; host:port; "" if not given
}

func parseStanza(c *caddy.Controller) (*Dotstub, error) {
	d := New()
	opts := &d.opts

	var from string
	if !c.Args(&from) {
		return nil, argErr(c, "FROM")
	}
	zones := plugin.Host(from).NormalizeExact()
	if len(zones) == 0 {
		return nil, c.Errf("FROM: %q is not a domain name", from)
	}
	if len(zones) > 1 {
		return nil, c.Errf("FROM: %q spans %d zones; give each its own stanza", from, len(zones))
	}
	d.from = zones[0]

	to := c.RemainingArgs()
	if len(to) == 0 {
		return nil, argErr(c, "TO")
	}
	if len(to) > maxUpstreams {
		return nil, c.Errf("TO: %d upstreams, at most %d are allowed", len(to), maxUpstreams)
	}
	// Read TO before the block, so that its errors name its line.
	seen := map[string]bool{}
	for _, s := range to {
		addr, name, err := parseTo(s)
		if err != nil {
			return nil, c.Errf("TO: %v", err)
		}
		if seen[addr] {
			return nil, c.Errf("TO: %q is given twice", s)
		}
		if !strings.Contains(s, "://") {
			log.Infof("Upstream %s: a bare address means DNS-over-TLS to %s here; forward would send plain DNS to port 53", s, addr)
		}
		if _, port, _ := net.SplitHostPort(addr); port == "53" {
			log.Warningf("Upstream %s: port 53 is plain DNS's; DNS-over-TLS servers listen on 853", s)
		}
		seen[addr] = true
		opts.to = append(opts.to, target{to: s, addr: addr, serverName: name})
	}
	for c.NextBlock() {
		if err := parseOption(c, d, opts); err != nil {
			return nil, err
		}
	}

	if privateZone(d.from) != "" { // FROM lies within a private zone: forward it, as asked
		d.private = false
	}
	if opts.healthCheck == 0 { // no health checks: never skip an upstream
		opts.maxFails = 0
	}
	ss := make([]*series, len(opts.to))
	for i, t := range opts.to {
		ss[i] = newSeries(t.to, t.addr)
	}
	tlsConfigs, pins, err := opts.tlsConfigs(ss)
	if err != nil {
		return nil, err
	}
	d.cfg, d.keys = dnsserver.GetConfig(c), c.ServerBlockKeys
	d.series = make(map[*upstream.Upstream]*series, len(opts.to))
	for i, t := range opts.to {
		s := ss[i]
		u := upstream.New(upstream.Config{
			Name:        t.to,
			MaxFails:    opts.maxFails,
			HealthCheck: opts.healthCheck,
			ProbeName:   opts.probeName,
			ProbeNoRec:  opts.probeNoRec,
			Privacy:     d.privacy,
			Pins:        pins[i],
			Probed:      s.probed,
			Changed:     changed(t.to),
			Pool: dot.Config{
				Addr:         t.addr,
				TLS:          tlsConfigs[i],
				MaxConns:     opts.maxConns,
				MaxInflight:  opts.maxInflight,
				Timeout:      d.timeout,
				Expire:       opts.expire,
				MaxAge:       opts.maxAge,
				MaxIdleConns: opts.maxIdle,
				LocalAddr:    opts.source,
				Events:       poolEvents(s),
			},
		})
		d.upstreams = append(d.upstreams, u)
		d.series[u] = s
	}
	return d, nil
}

func parseOption(c *caddy.Controller, d *Dotstub, o *options) error {
	switch opt := c.Val(); opt {
	case "except":
		names := c.RemainingArgs()
		if len(names) == 0 {
			return argErr(c, opt)
		}
		for _, n := range names {
			zones := plugin.Host(n).NormalizeExact()
			if len(zones) == 0 {
				return c.Errf("except: %q is not a domain name", n)
			}
			d.ignored = append(d.ignored, zones...)
		}
	case "tls":
		args := c.RemainingArgs()
		if len(args) > 3 {
			return argErr(c, opt)
		}
		root := dnsserver.GetConfig(c).Root
		for i := range args {
			if !filepath.IsAbs(args[i]) && root != "" {
				args[i] = filepath.Join(root, args[i])
			}
		}
		cfg, err := pkgtls.NewTLSConfigFromArgs(args...)
		if err != nil {
			return c.Errf("tls: %v", err)
		}
		if err := o.id.tlsGaveCA(c, len(args)%2 == 1); err != nil { // CA, or CERT KEY CA
			return err
		}
		o.tls = cfg
	case "tls_servername":
		var name string
		if !c.Args(&name) || c.NextArg() {
			return argErr(c, opt)
		}
		if _, ok := dns.IsDomainName(name); !ok || strings.Contains(name, "/") || strings.TrimSuffix(name, ".") == "" {
			return c.Errf("tls_servername: %q is not a server name", name)
		}
		name = strings.TrimSuffix(name, ".")
		for _, t := range o.to {
			if t.serverName != "" {
				return c.Errf("tls_servername: %q conflicts with the server name %q in %q; give one or the other", name, t.serverName, t.to)
			}
		}
		o.serverName = name
	case "tls_ca":
		if err := o.id.parseCA(c); err != nil {
			return err
		}
	case "pin_sha256":
		if err := o.id.parsePins(c); err != nil {
			return err
		}
	case "policy":
		var p string
		if !c.Args(&p) || c.NextArg() {
			return argErr(c, opt)
		}
		policy, ok := upstream.NewPolicy(p)
		if !ok {
			return c.Errf("policy: %q is not one of %s", p, strings.Join(upstream.Policies, ", "))
		}
		d.policy = policy
	case "health_check":
		return parseHealthCheck(c, o)
	case "max_fails":
		n, err := parseInt(c, 0, math.MaxInt32)
		if err != nil {
			return err
		}
		o.maxFails = uint32(n)
	case "expire":
		dur, err := parseDuration(c, time.Nanosecond)
		if err != nil {
			return err
		}
		if o.maxAge > 0 && dur > o.maxAge {
			return c.Errf("expire: %s is more than max_age (%s); connections would be retired before they could expire", dur, o.maxAge)
		}
		o.expire = dur
	case "max_concurrent":
		n, err := parseInt(c, 0, math.MaxInt32)
		if err != nil {
			return err
		}
		d.maxConcurrent = int64(n)
	case "timeout":
		dur, err := parseDuration(c, time.Millisecond)
		if err != nil {
			return err
		}
		d.timeout = dur
	case "max_conns":
		n, err := parseInt(c, 1, 1024)
		if err != nil {
			return err
		}
		o.maxConns = n
	case "max_age":
		dur, err := parseDuration(c, 0)
		if err != nil {
			return err
		}
		if expire := cmp.Or(o.expire, dot.DefaultExpire); dur > 0 && dur < expire {
			return c.Errf("max_age: %s is less than expire (%s); connections would be retired before they could expire", dur, expire)
		}
		o.maxAge = dur
	case "max_idle_conns":
		n, err := parseInt(c, 0, math.MaxInt32)
		if err != nil {
			return err
		}
		o.maxIdle = n
	case "max_connect_attempts":
		n, err := parseInt(c, 0, math.MaxInt32)
		if err != nil {
			return err
		}
		d.attempts = n
		if n == 0 {
			d.attempts = maxUpstreams
		}
	case "read_timeout":
		dur, err := parseDuration(c, time.Millisecond)
		if err != nil {
			return err
		}
		d.readTimeout = dur
	case "next", "next_on_nodata":
		return parseNext(c, d)
	case "source_address":
		var s string
		if !c.Args(&s) || c.NextArg() {
			return argErr(c, opt)
		}
		ip := net.ParseIP(s)
		if ip == nil {
			return c.Errf("source_address: %q is not an IP address", s)
		}
		o.source = ip
	case "private_names":
		var v string
		if !c.Args(&v) || c.NextArg() {
			return argErr(c, opt)
		}
		switch v {
		case "on":
			d.private = true
		case "off":
			d.private = false
		default:
			return c.Errf("private_names: %q is neither on nor off", v)
		}
	case "force_tcp":
		if c.NextArg() {
			return argErr(c, opt)
		}
		log.Infof("force_tcp: every query to an upstream goes over TCP already (DNS-over-TLS); the option changes nothing")
	case "prefer_udp":
		return c.Errf("prefer_udp: dotstub sends no query over UDP, only over DNS-over-TLS; remove the option")
	case "doh_method":
		return c.Errf("doh_method: dotstub speaks DNS-over-TLS, not DNS-over-HTTPS; remove the option and give the resolver's DoT address, tls://IP%%SERVERNAME")
	case "resolver":
		return c.Errf("resolver: dotstub takes upstreams by IP address only, as a host name would need a lookup in clear; remove the option and give tls://IP%%SERVERNAME")
	case "max_inflight":
		n, err := parseInt(c, 1, dot.MaxInflight) // half the IDs: the other half for IDs given up on
		if err != nil {
			return err
		}
		o.maxInflight = n
	case "failfast_all_unhealthy_upstreams":
		if c.NextArg() {
			return argErr(c, opt)
		}
		d.failfast = true
	case "failover":
		rcodes, err := parseRcodes(c)
		if err != nil {
			return err
		}
		if slices.Contains(rcodes, dns.RcodeSuccess) {
			return c.Errf("failover: NOERROR is an answer, not a failure")
		}
		d.failoverRcodes = append(d.failoverRcodes, rcodes...)
	case "hedge":
		var v string
		if !c.Args(&v) || c.NextArg() {
			return argErr(c, opt)
		}
		d.hedge.enabled = true
		if v == "auto" {
			d.hedge.auto = true
			break
		}
		dur, err := time.ParseDuration(v)
		if err != nil || dur < time.Millisecond {
			return c.Errf("hedge: %q is neither auto nor a duration of 1ms or more", v)
		}
		d.hedge.delay = dur
	case "padding":
		var v string
		if !c.Args(&v) || c.NextArg() {
			return argErr(c, opt)
		}
		if v == "off" {
			d.privacy.PadBlock = 0
			break
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 16 || n > 1024 {
			return c.Errf("padding: %q is neither off nor a block size from 16 to 1024 bytes", v)
		}
		d.privacy.PadBlock = n
	case "strip_client_subnet":
		if c.NextArg() {
			return argErr(c, opt)
		}
		d.privacy.StripSubnet = true
	case "pin_report_only":
		if err := o.id.parseReportOnly(c); err != nil {
			return err
		}
	default:
		return c.Errf("unknown option %q", opt)
	}
	return nil
}

// parseHealthCheck reads health_check DURATION [no_rec] [domain NAME].
func parseHealthCheck(c *caddy.Controller, o *options) error {
	args := c.RemainingArgs()
	if len(args) == 0 {
		return argErr(c, "health_check")
	}
	dur, err := time.ParseDuration(args[0])
	if err != nil {
		return c.Errf("health_check: %q is not a duration such as 500ms or 10s", args[0])
	}
	if dur < 0 {
		return c.Errf("health_check: %s is negative", dur)
	}
	o.healthCheck = dur
	for args = args[1:]; len(args) > 0; args = args[1:] {
		switch args[0] {
		case "no_rec":
			o.probeNoRec = true
		case "domain":
			if len(args) < 2 {
				return c.Errf("health_check: want a NAME after domain")
			}
			if _, ok := dns.IsDomainName(args[1]); !ok {
				return c.Errf("health_check: domain %q is not a domain name", args[1])
			}
			o.probeName = dns.Fqdn(args[1])
			args = args[1:]
		default:
			return c.Errf("health_check: %q: want no_rec or domain NAME after the duration", args[0])
		}
	}
	return nil
}

// parseNext reads next RCODE... and next_on_nodata.
func parseNext(c *caddy.Controller, d *Dotstub) error {
	if opt := c.Val(); opt == "next_on_nodata" {
		if c.NextArg() {
			return argErr(c, opt)
		}
		d.nextOnNodata = true
		return nil
	}
	rcodes, err := parseRcodes(c)
	d.nextRcodes = append(d.nextRcodes, rcodes...)
	return err
}

// parseRcodes reads the arguments of the current option, one or more
// RCODEs by name (SERVFAIL, nxdomain, ...).
func parseRcodes(c *caddy.Controller) ([]int, error) {
	opt := c.Val()
	args := c.RemainingArgs()
	if len(args) == 0 {
		return nil, argErr(c, opt)
	}
	rcodes := make([]int, len(args))
	for i, a := range args {
		rc, ok := dns.StringToRcode[strings.ToUpper(a)]
		if !ok {
			return nil, c.Errf("%s: %q is not an RCODE", opt, a)
		}
		rcodes[i] = rc
	}
	return rcodes, nil
}

// argErr is c.ArgErr naming the option or argument: after surplus arguments,
// c.ArgErr names only the last of them.
func argErr(c *caddy.Controller, what string) error {
	return c.Errf("%s: wrong argument count", what)
}

func pinStrings(s pin.Set) []string {
	out := make([]string, len(s))
	for i, p := range s {
		out[i] = p.String()
	}
	return out
}

// parseDuration reads the one argument of the current option as a duration of
// at least least.
func parseDuration(c *caddy.Controller, least time.Duration) (time.Duration, error) {
	opt := c.Val()
	var s string
	if !c.Args(&s) || c.NextArg() {
		return 0, argErr(c, opt)
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		return 0, c.Errf("%s: %q is not a duration such as 500ms or 10s", opt, s)
	}
	if dur < least {
		if least == 0 {
			return 0, c.Errf("%s: %s is negative", opt, dur)
		}
		return 0, c.Errf("%s: %s is less than %s", opt, dur, least)
	}
	return dur, nil
}

// parseInt reads the one argument of the current option as an integer in
// [least, most].
func parseInt(c *caddy.Controller, least, most int) (int, error) {
	opt := c.Val()
	var s string
	if !c.Args(&s) || c.NextArg() {
		return 0, argErr(c, opt)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < least || n > most {
		return 0, c.Errf("%s: %q is not an integer from %d to %d", opt, s, least, most)
	}
	return n, nil
}
