//go:build linux

package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestServfailWrittenOnce: on one TCP connection, a query whose upstream
// fails its pin, then one that is answered. The first gets one SERVFAIL with
// an Extended DNS Error, and the next message on the connection is the
// second query's answer: CoreDNS wrote no second SERVFAIL. The errors plugin
// logs the failure.
func TestServfailWrittenOnce(t *testing.T) {
	bin := buildCoreDNS(t)
	f := newPinFixture(t)
	port := freePort(t)
	cd := startCoreDNS(t, bin, f.dir, fmt.Sprintf(`.:%[1]s {
    bind 127.0.0.1
    errors
    dotstub pinned.test %[2]s {
        tls %[3]s
        pin_sha256 %[4]s
    }
    dotstub . %[2]s {
        tls %[3]s
    }
}
`, port, f.to, f.ca, f.foreign.Leaf.Pin()))

	c, err := dns.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	bad, good := new(dns.Msg), new(dns.Msg)
	bad.SetQuestion("www.pinned.test.", dns.TypeA)
	bad.SetEdns0(1232, false)
	good.SetQuestion("www.example.org.", dns.TypeA)
	good.SetEdns0(1232, false)
	for _, m := range []*dns.Msg{bad, good} {
		if err := c.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		a, err := c.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		if a.Id != m.Id {
			t.Fatalf("read an answer with ID %d after the query with ID %d: a second answer to an earlier query?\n%s", a.Id, m.Id, a)
		}
		if m == good {
			if a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 {
				t.Errorf("the answered query got:\n%s", a)
			}
			continue
		}
		if a.Rcode != dns.RcodeServerFailure || a.IsEdns0() == nil || len(a.IsEdns0().Option) != 1 {
			t.Fatalf("the query whose upstream fails its pin got:\n%s", a)
		}
		if e, ok := a.IsEdns0().Option[0].(*dns.EDNS0_EDE); !ok || e.InfoCode != dns.ExtendedErrorCodeNoReachableAuthority || !strings.Contains(e.ExtraText, "pin mismatch") {
			t.Errorf("EDE %v; want No Reachable Authority, pin mismatch", a.IsEdns0().Option[0])
		}
	}
	if _, ok := cd.waitLog("www.pinned.test. A: SERVFAIL written with EDE 22", 10*time.Second); !ok {
		t.Errorf("the errors plugin logged no line for the SERVFAIL:\n%s", cd.logText())
	}
}
