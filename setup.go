package dotstub

import (
	"crypto/tls"
	"fmt"
	"math"
	"net"
	"net/netip"
	"path/filepath"
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
	defaultPort  = "853"
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

// options holds what a stanza says that is only needed to build upstreams.
type options struct {
	to          []target    // TO, read before the block
	tls         *tls.Config // from the tls option; nil means system roots
	serverName  string      // tls_servername
	pins        pin.Set
	maxFails    uint32
	healthCheck time.Duration
	expire      time.Duration
	maxConns    int
	maxInflight int
}

// target is one TO argument, parsed.
type target struct {
	to, addr, serverName string // as configured; host:port; "" if not given
}

func parseStanza(c *caddy.Controller) (*Dotstub, error) {
	d := New()
	opts := options{maxFails: upstream.DefaultMaxFails, healthCheck: upstream.DefaultHealthCheck, expire: dot.DefaultExpire}

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
		seen[addr] = true
		opts.to = append(opts.to, target{to: s, addr: addr, serverName: name})
	}
	for c.NextBlock() {
		if err := parseOption(c, d, &opts); err != nil {
			return nil, err
		}
	}

	if opts.healthCheck == 0 { // no health checks: never skip an upstream
		opts.maxFails = 0
	}
	for _, t := range opts.to {
		name := t.serverName
		if name == "" {
			name = opts.serverName
		}
		if name == "" {
			// No name given: verify the certificate against the IP address.
			host, _, _ := net.SplitHostPort(t.addr)
			name = host
		}
		d.upstreams = append(d.upstreams, upstream.New(upstream.Config{
			Name:        t.to,
			MaxFails:    opts.maxFails,
			HealthCheck: opts.healthCheck,
			Probed:      probed(t.to),
			Pool: dot.Config{
				Addr:        t.addr,
				TLS:         clientTLS(opts.tls, name, opts.pins),
				MaxConns:    opts.maxConns,
				MaxInflight: opts.maxInflight,
				Timeout:     d.timeout,
				Expire:      opts.expire,
				Events:      poolEvents(t.to),
			},
		}))
	}
	return d, nil
}

// clientTLS returns the TLS configuration for one upstream: base (or system
// roots), verifying serverName and the pins, at least TLS 1.2, with a session
// cache of its own so that reconnects resume.
func clientTLS(base *tls.Config, serverName string, pins pin.Set) *tls.Config {
	cfg := &tls.Config{}
	if base != nil {
		cfg = base.Clone()
	}
	cfg.ServerName = serverName
	cfg.InsecureSkipVerify = false
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	pins.Apply(cfg)
	return cfg
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
	case "pin_sha256":
		args := c.RemainingArgs()
		if len(args) == 0 {
			return argErr(c, opt)
		}
		pins, err := pin.ParseSet(append(pinStrings(o.pins), args...))
		if err != nil {
			return c.Errf("pin_sha256: %v", err)
		}
		o.pins = pins
	case "policy":
		var p string
		if !c.Args(&p) || c.NextArg() {
			return argErr(c, opt)
		}
		switch p {
		case "random":
			d.policy = upstream.Random{}
		case "round_robin":
			d.policy = &upstream.RoundRobin{}
		case "sequential":
			d.policy = upstream.Sequential{}
		default:
			return c.Errf("policy: %q is not one of random, round_robin, sequential", p)
		}
	case "health_check":
		dur, err := parseDuration(c, 0)
		if err != nil {
			return err
		}
		o.healthCheck = dur
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
	case "max_inflight":
		n, err := parseInt(c, 1, 65535)
		if err != nil {
			return err
		}
		o.maxInflight = n
	default:
		return c.Errf("unknown option %q", opt)
	}
	return nil
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

// parseTo reads one upstream, spelled as forward spells a TLS upstream:
// tls://IP[%SERVERNAME][:PORT], or a bare IP[:PORT], which means tls://.
// IPv6 addresses take brackets when a port follows: tls://[2001:db8::1%dns.example]:853.
// It returns the address to dial and the server name, if one was given.
func parseTo(s string) (addr, serverName string, err error) {
	rest := s
	if scheme, after, ok := strings.Cut(s, "://"); ok {
		if scheme != "tls" {
			return "", "", fmt.Errorf("%q is not a tls:// upstream; dotstub never sends a query in clear", s)
		}
		rest = after
	}
	host, port := rest, ""
	bracketed := strings.HasPrefix(host, "[")
	if i := strings.LastIndex(host, "%"); i >= 0 {
		host, serverName = rest[:i], rest[i+1:]
		if j := strings.LastIndex(serverName, ":"); j >= 0 {
			serverName, port = serverName[:j], serverName[j+1:]
		}
		if bracketed {
			if !strings.HasSuffix(serverName, "]") {
				return "", "", fmt.Errorf("%q: missing ']'", s)
			}
			serverName = strings.TrimSuffix(serverName, "]")
			host = host[1:]
		}
		if _, ok := dns.IsDomainName(serverName); !ok || strings.TrimSuffix(serverName, ".") == "" || strings.ContainsAny(serverName, "[]/") {
			return "", "", fmt.Errorf("%q: %q is not a server name", s, serverName)
		}
		serverName = strings.TrimSuffix(serverName, ".")
	} else if h, p, err := net.SplitHostPort(rest); err == nil {
		host, port = h, p
	} else if bracketed && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return "", "", fmt.Errorf("%q: %q is not an IP address (a host name would need a lookup in clear)", s, host)
	}
	if port == "" {
		port = defaultPort
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("%q: %q is not a port", s, port)
	}
	// Spelled canonically, so that 853 and 0853 are the same upstream.
	return net.JoinHostPort(ip.String(), strconv.Itoa(n)), serverName, nil
}
