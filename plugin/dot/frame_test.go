package dot

import (
	"bytes"
	"errors"
	"io"
	"testing"
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

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			b, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(b) < headerLen {
				t.Fatalf("frame of %d bytes accepted", len(b))
			}
		}
	})
}
