package upstream

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// DefaultPort is the DNS-over-TLS port (RFC 7858), for a TO without one.
const DefaultPort = "853"

// ParseTo reads one upstream, spelled as forward spells a TLS upstream:
// tls://IP[%SERVERNAME][:PORT], or a bare IP[:PORT], which means tls://.
// IPv6 addresses take brackets when a port follows: tls://[2001:db8::1%dns.example]:853.
// It returns the address to dial and the server name, if one was given.
func ParseTo(s string) (addr, serverName string, err error) {
	rest := s
	if scheme, after, ok := strings.Cut(s, "://"); ok {
		switch scheme {
		case "tls":
		case "dns":
			return "", "", fmt.Errorf("%q is not a tls:// upstream: dotstub never sends a query in clear; write tls://IP%%SERVERNAME for a resolver that serves DNS-over-TLS", s)
		case "https", "quic", "grpc":
			return "", "", fmt.Errorf("%q is not a tls:// upstream: dotstub speaks DNS-over-TLS, not %s; write tls://IP%%SERVERNAME if the resolver serves DNS-over-TLS too", s,
				map[string]string{"https": "DNS-over-HTTPS", "quic": "DNS-over-QUIC", "grpc": "DNS-over-gRPC"}[scheme])
		default:
			return "", "", fmt.Errorf("%q is not a tls:// upstream (schemes are lower case)", s)
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
		port = DefaultPort
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("%q: %q is not a port", s, port)
	}
	// Spelled canonically, so that 853 and 0853 are the same upstream.
	return net.JoinHostPort(ip.String(), strconv.Itoa(n)), serverName, nil
}
