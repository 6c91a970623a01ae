package dot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// headerLen is the size of a DNS message header; no valid message is shorter.
const headerLen = 12

// errShortFrame reports a frame too short to hold a DNS header.
var errShortFrame = errors.New("frame shorter than a DNS header")

// ReadFrame reads one DNS message framed by a two-byte length (RFC 1035
// section 4.2.2) from r and returns it in a new buffer. A frame shorter than a
// DNS header is an error: the stream cannot be trusted after it.
func ReadFrame(r io.Reader) ([]byte, error) { return readFrameInto(r, nil) }

// readFrameInto is ReadFrame into buf, grown as needed: a connection's reader
// reads every answer into one buffer, since unpacking an answer copies all
// it keeps (TestUnpackKeepsNothingOfTheFrame).
func readFrameInto(r io.Reader, buf []byte) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n < headerLen {
		return nil, fmt.Errorf("%w: %d bytes", errShortFrame, n)
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}
