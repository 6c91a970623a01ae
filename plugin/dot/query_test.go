package dot

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/miekg/dns"
)

// answerFault says what is wrong with a as the answer a client gets for q,
// or "" if nothing is: it must be a response to q's very question (name
// equal up to ASCII case, type and class), carry the client's ID, and hold
// nothing of what protect added and the client did not ask for.
func answerFault(q *Query, a *dns.Msg) string {
	if a == nil {
		return "no answer and no error"
	}
	m := q.msg
	switch {
	case a.Id != m.Id:
		return fmt.Sprintf("ID %d, want the client's %d", a.Id, m.Id)
	case !a.Response:
		return "not a response"
	case a.Opcode != m.Opcode:
		return fmt.Sprintf("opcode %d, want %d", a.Opcode, m.Opcode)
	case len(a.Question) != 1:
		return fmt.Sprintf("%d questions", len(a.Question))
	}
	aq, qq := a.Question[0], m.Question[0]
	if aq.Qtype != qq.Qtype || aq.Qclass != qq.Qclass || !equalFoldASCII(aq.Name, qq.Name) {
		return fmt.Sprintf("question %v, want %v", aq, qq)
	}
	for _, rr := range a.Extra {
		opt, ok := rr.(*dns.OPT)
		if !ok {
			continue
		}
		if q.addedOPT {
			return fmt.Sprintf("OPT record for a client that sent none: %v", opt)
		}
		for _, o := range opt.Option {
			if q.padAt > 0 && o.Option() == dns.EDNS0PADDING {
				return "padding the client did not ask for"
			}
		}
	}
	if q.addedOPT && a.Rcode > 0xf {
		return fmt.Sprintf("extended RCODE %d without OPT", a.Rcode)
	}
	return ""
}

// equalFoldASCII reports whether a and b are equal up to the case of ASCII
// letters, which is all that DNS names fold (RFC 4343).
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	lower := func(c byte) byte {
		if 'A' <= c && c <= 'Z' {
			return c + 'a' - 'A'
		}
		return c
	}
	for i := range len(a) {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

// answerQueries are the queries FuzzAnswer answers, one for each way
// NewQuery can change a query: as is, with an OPT added for padding, with the
// client's OPT padded, and with the client subnet stripped.
func answerQueries(tb testing.TB) []*Query {
	tb.Helper()
	plain := new(dns.Msg)
	plain.SetQuestion("wWw.Example.ORG.", dns.TypeA)
	plain.Id = 0x1234
	edns := withEDNS(true, subnet())
	edns.Id = 0x4321
	var qs []*Query
	for _, c := range []struct {
		m *dns.Msg
		p Privacy
	}{
		{plain, Privacy{}},
		{plain, Privacy{PadBlock: DefaultPadBlock}},
		{edns, Privacy{PadBlock: DefaultPadBlock}},
		{edns, Privacy{StripSubnet: true}},
	} {
		q, err := NewQuery(c.m, c.p)
		if err != nil {
			tb.Fatal(err)
		}
		qs = append(qs, q)
	}
	return qs
}

func TestAnswerFault(t *testing.T) {
	qs := answerQueries(t)
	reply := func(q *Query, change func(a *dns.Msg)) *dns.Msg {
		a := new(dns.Msg)
		a.SetReply(q.msg)
		if change != nil {
			change(a)
		}
		return a
	}
	if f := answerFault(qs[0], reply(qs[0], nil)); f != "" {
		t.Errorf("a reply: %s", f)
	}
	for name, change := range map[string]func(a *dns.Msg){
		"ID":             func(a *dns.Msg) { a.Id++ },
		"not a response": func(a *dns.Msg) { a.Response = false },
		"opcode":         func(a *dns.Msg) { a.Opcode = dns.OpcodeNotify },
		"two questions":  func(a *dns.Msg) { a.Question = append(a.Question, a.Question[0]) },
		"type":           func(a *dns.Msg) { a.Question[0].Qtype = dns.TypeAAAA },
		"class":          func(a *dns.Msg) { a.Question[0].Qclass = dns.ClassCHAOS },
		"name":           func(a *dns.Msg) { a.Question[0].Name = "www.example.net." },
		"non-ASCII fold": func(a *dns.Msg) { a.Question[0].Name = "www.e\u212aample.org." },
		"added OPT":      func(a *dns.Msg) { a.SetEdns0(1232, false) },
		"extended RCODE": func(a *dns.Msg) { a.Rcode = dns.RcodeBadCookie },
		"padding comes back": func(a *dns.Msg) {
			a.SetEdns0(1232, false)
			a.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, 8)}}
		},
	} {
		q := qs[1] // padded, with the OPT added
		if f := answerFault(q, reply(q, change)); f == "" {
			t.Errorf("%s: no fault found", name)
		}
	}
}

// FuzzAnswer feeds arbitrary bytes to Query.answer as the upstream's answer
// to a fixed query: it never panics, never leaves the query changed, and
// either returns an error wrapping ErrBadAnswer and no message, or an answer
// to the query's very question (answerFault) that packs again for the
// client.
func FuzzAnswer(f *testing.F) {
	qs := answerQueries(f)
	for i, q := range qs {
		a := new(dns.Msg)
		a.SetReply(q.msg)
		f.Add(packed(f, a), uint8(i))
	}
	f.Fuzz(func(t *testing.T, buf []byte, which uint8) {
		q := qs[int(which)%len(qs)]
		frame := bytes.Clone(q.frame)
		a := unpackAnswer(bytes.Clone(buf))
		if a == nil || !q.match(a) {
			return
		}
		q.finish(a, false)
		if !bytes.Equal(q.frame, frame) {
			t.Fatal("finish changed the query")
		}
		if fault := answerFault(q, a); fault != "" {
			t.Fatalf("answer accepted: %s\n%v", fault, a)
		}
		if _, err := a.Pack(); err != nil {
			t.Fatalf("accepted answer does not pack for the client: %v\n%v", err, a)
		}
	})
}
