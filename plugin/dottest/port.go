package dottest

import (
	"errors"
	"fmt"
	"net"
)

// FreePort finds a port on 127.0.0.1 that is free for both UDP and TCP just
// now, for a DNS server under test (CoreDNS binds both).
func FreePort() (int, error) {
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port, nil
		}
	}
	return 0, errors.New("no port free for both UDP and TCP")
}
