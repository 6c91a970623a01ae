// Command dotupstream serves a synthetic zone over DNS-over-TLS on loopback,
// with a certificate authority made at start-up, for demos and benchmarks
// that must run without the internet.
//
// It writes into -dir: ca.pem (the CA to trust), cert.pem and key.pem (the
// server's chain and key, for another server such as CoreDNS's tls plugin to
// present), leaf.pin and ca.pin (their SPKI pins), and addr (the address it
// listens on, written last, once it serves). It answers as dottest.Answer
// does: A 192.0.2.1, AAAA 2001:db8::1, NXDOMAIN for names starting "nx.",
// about 4 kB of TXT for names starting "big.". With -close-after N it closes
// each connection once it has answered N queries, as upstreams that limit
// queries per connection do. It stops on SIGINT or SIGTERM.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dotstub/dotstub/plugin/dottest"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve DoT on")
	dir := flag.String("dir", ".", "directory to write ca.pem, cert.pem, key.pem, leaf.pin, ca.pin and addr into")
	name := flag.String("name", dottest.DefaultName, "server name in the certificate")
	certsOnly := flag.Bool("certs-only", false, "write the files and exit without serving")
	closeAfter := flag.Int("close-after", 0, "close each connection once it has answered this many queries (0: never)")
	flag.Parse()
	if *closeAfter < 0 {
		log.Fatalf("-close-after %d: want 0 or more", *closeAfter)
	}

	ca, err := dottest.NewCA("dotupstream throwaway CA")
	if err != nil {
		log.Fatal(err)
	}
	leaf, err := ca.Issue([]string{*name}, time.Time{}, time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	files := map[string][]byte{
		"ca.pem":   ca.PEM,
		"cert.pem": leaf.CertPEM,
		"key.pem":  leaf.KeyPEM,
		"leaf.pin": []byte(leaf.Pin().String() + "\n"),
		"ca.pin":   []byte(ca.Pin().String() + "\n"),
	}
	for f, b := range files {
		if err := os.WriteFile(filepath.Join(*dir, f), b, 0o600); err != nil {
			log.Fatal(err)
		}
	}
	if *certsOnly {
		return
	}

	srv, err := dottest.Start(dottest.Options{Addr: *listen, CA: ca, Leaf: leaf, CloseAfter: *closeAfter})
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*dir, "addr"), []byte(srv.Addr+"\n"), 0o600); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("dotupstream: serving DoT on %s as %s; leaf pin %s, CA pin %s\n", srv.Addr, *name, leaf.Pin(), ca.Pin())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	srv.Close()
	fmt.Printf("dotupstream: stopped after %d connections, %d handshakes (%d resumed), %d queries\n",
		srv.Accepted(), srv.Handshakes(), srv.Resumed(), srv.Queries())
}
