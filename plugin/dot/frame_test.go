package dot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"testing/iotest"

	"github.com/miekg/dns"
)

func TestReadFrame(t *testing.T) {
	msg := bytes.Repeat([]byte{7}, 12)
	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr error
	}{
		{"message", append([]byte{0, 12}, msg...), msg, nil},
		{"empty stream", nil, nil, io.EOF},
		{"half a prefix", []byte{0}, nil, io.ErrUnexpectedEOF},
		{"short body", append([]byte{0, 13}, msg...), nil, io.ErrUnexpectedEOF},
		{"prefix only", []byte{0, 12}, nil, io.ErrUnexpectedEOF},
		{"shorter than a header", []byte{0, 3, 1, 2, 3}, nil, errShortFrame},
		{"zero length", []byte{0, 0}, nil, errShortFrame},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadFrame(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.wantErr) || !bytes.Equal(got, tc.want) {
				t.Errorf("ReadFrame = %v, %v; want %v, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// FuzzReadFrame reads frames from arbitrary bytes, whole and one byte at a
// time, until an error: each frame read is the next one of the stream, of the
// length its prefix gives and at least a header long, and the error says
// what ended the stream: io.EOF at a frame boundary, errShortFrame for a
// length under a header's, io.ErrUnexpectedEOF for a cut frame.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, r := range []io.Reader{bytes.NewReader(in), iotest.OneByteReader(bytes.NewReader(in))} {
			rest := in
			for {
				b, err := ReadFrame(r)
				n := -1 // the length the next prefix gives
				if len(rest) >= 2 {
					n = int(binary.BigEndian.Uint16(rest))
				}
				var want error
				switch {
				case len(rest) == 0:
					want = io.EOF
				case n < 0:
					want = io.ErrUnexpectedEOF
				case n < headerLen:
					want = errShortFrame
				case len(rest) < 2+n:
					want = io.ErrUnexpectedEOF
				}
				if want == nil {
					if err != nil || !bytes.Equal(b, rest[2:2+n]) {
						t.Fatalf("ReadFrame = %x, %v; want the %d bytes %x", b, err, n, rest[2:2+n])
					}
					rest = rest[2+n:]
					continue
				}
				if b != nil || !errors.Is(err, want) {
					t.Fatalf("ReadFrame = %x, %v; want %v", b, err, want)
				}
				break
			}
		}
	})
}

// TestUnpackKeepsNothingOfTheFrame: an answer unpacked from a frame shares no
// memory with it, whatever its records and options, so the reader may read
// the next frame into the same buffer (readFrameInto).
func TestUnpackKeepsNothingOfTheFrame(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeANY)
	m.Response = true
	for _, s := range []string{
		"www.example.org. 60 IN A 192.0.2.1",
		"www.example.org. 60 IN AAAA 2001:db8::1",
		"www.example.org. 60 IN TXT \"some text\" \"more\"",
		"www.example.org. 60 IN MX 10 mail.example.org.",
		"www.example.org. 60 IN CAA 0 issue \"ca.example.net\"",
		"www.example.org. 60 IN HTTPS 1 . alpn=h2,h3 ipv4hint=192.0.2.1 ech=AEj+DQBEAQAgACA=",
		"www.example.org. 60 IN SSHFP 1 1 dc5f1a7b6b1e2d4e",
		"www.example.org. 60 IN TYPE65280 \\# 4 0a000001",
		"www.example.org. 60 IN DS 12345 13 2 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"www.example.org. 60 IN NSEC3PARAM 1 0 0 abcd",
		"www.example.org. 60 IN TLSA 3 1 1 0123456789abcdef",
		"www.example.org. 60 IN APL 1:192.0.2.0/24",
	} {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		m.Answer = append(m.Answer, rr)
	}
	m.SetEdns0(1232, true)
	opt := m.IsEdns0()
	opt.Option = append(opt.Option,
		&dns.EDNS0_PADDING{Padding: make([]byte, 16)},
		&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
		&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0).To4()},
		&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeOther, ExtraText: "text"},
		&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "6e73"},
		&dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2, 3}},
	)
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	keepsNothing(t, "many types and options", wire)
	for name, m := range fastShapes(t) { // unpackFast's shapes
		keepsNothing(t, name, packCompressed(t, m))
	}
}

func keepsNothing(t *testing.T, name string, wire []byte) {
	t.Helper()
	buf := append([]byte(nil), wire...)
	a := unpackAnswer(buf)
	if a == nil {
		t.Fatalf("%s: the answer did not unpack", name)
	}
	before := a.String()
	for i := range buf {
		buf[i] = 0xff
	}
	if after := a.String(); after != before {
		t.Errorf("%s: the answer changed with the buffer it was unpacked from:\n%s\nwas\n%s", name, after, before)
	}
}
