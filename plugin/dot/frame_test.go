package dot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"
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
