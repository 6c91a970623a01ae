package dotstub

import (
	"crypto/tls"
	"net"

	"github.com/dotstub/dotstub/plugin/pin"
	"github.com/dotstub/dotstub/plugin/upstream"
)

// How the TLS configuration of each upstream is built from what identity.go
// parsed: its server name, its CA and its pins.

// configuredName returns the server name given for t, by %NAME or
// tls_servername, or "".
func (o *options) configuredName(t target) string {
	if t.serverName != "" {
		return t.serverName
	}
	return o.serverName
}

// tlsConfigs returns the TLS configuration of each upstream of o.to, in
// order: its server name, its CA (its own, the stanza's, or the system
// roots) and its pins (its own or the stanza's), which it also returns.
// Report-only pin mismatches are counted in the upstream's series, ss[i].
func (o *options) tlsConfigs(ss []*series) ([]*tls.Config, []pin.Set, error) {
	if o.id.reportOnly != nil && o.id.pinsAt == nil && len(o.id.pinsBy) == 0 {
		return nil, nil, o.id.reportOnly.Errf("pin_report_only: this block has no pin_sha256 to report on")
	}
	pinsBy, err := o.resolve(o.id.pinsBy, "pin_sha256")
	if err != nil {
		return nil, nil, err
	}
	caBy, err := o.resolve(o.id.caBy, "tls_ca")
	if err != nil {
		return nil, nil, err
	}
	if len(o.id.pinsBy) > 0 {
		for i, t := range o.to {
			if pinsBy[i] == nil {
				sel := t.addr
				if host, port, _ := net.SplitHostPort(t.addr); port == upstream.DefaultPort {
					sel = host
				}
				return nil, nil, o.id.pinsBy[0].at.Errf("pin_sha256: %s has no pin, while this block pins others; pin it (pin_sha256 %s PIN...) or leave it unpinned on purpose (pin_sha256 %s %s)",
					t.to, sel, sel, unpinnedWord)
			}
		}
	}
	cfgs, sets := make([]*tls.Config, len(o.to)), make([]pin.Set, len(o.to))
	for i, t := range o.to {
		name := o.configuredName(t)
		if name == "" {
			// No name given: verify the certificate against the IP address.
			name, _, _ = net.SplitHostPort(t.addr)
		}
		pins := o.id.pins
		if s := pinsBy[i]; s != nil {
			pins = s.pins
		}
		sets[i] = pins
		var report func(error)
		if o.id.reportOnly != nil && len(pins) > 0 {
			report = pinMismatchReported(ss[i], log.Warningf)
		}
		cfgs[i] = clientTLS(o.tls, name, pins, report) // a fresh copy
		if s := caBy[i]; s != nil {
			cfgs[i].RootCAs = s.ca
		} else if o.id.ca != nil {
			cfgs[i].RootCAs = o.id.ca
		}
	}
	return cfgs, sets, nil
}

// clientTLS returns the TLS configuration for one upstream: base (or system
// roots), verifying serverName and the pins, at least TLS 1.2, with a session
// cache of its own so that reconnects resume. A non-nil report makes the pins
// report-only: a mismatch on a verified chain goes to report and the
// connection is used.
func clientTLS(base *tls.Config, serverName string, pins pin.Set, report func(error)) *tls.Config {
	cfg := &tls.Config{}
	if base != nil {
		cfg = base.Clone()
	}
	cfg.ServerName = serverName
	cfg.InsecureSkipVerify = false
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	if report != nil {
		pins.ApplyReportOnly(cfg, report)
	} else {
		pins.Apply(cfg)
	}
	return cfg
}
