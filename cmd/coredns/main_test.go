package main

import (
	"slices"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

func TestDirectiveOrder(t *testing.T) {
	dirs := dnsserver.Directives
	if n := count(dirs, "dotstub"); n != 1 {
		t.Fatalf("dotstub appears %d times in the directives, want 1", n)
	}
	i, f := slices.Index(dirs, "dotstub"), slices.Index(dirs, "forward")
	if f != i+1 {
		t.Fatalf("dotstub at %d, forward at %d: want dotstub immediately before forward", i, f)
	}
	for _, front := range []string{"log", "errors", "prometheus", "health", "ready", "reload", "rewrite", "hosts", "cache", "kubernetes"} {
		if j := slices.Index(dirs, front); j < 0 || j > i {
			t.Errorf("%s at %d: want it before dotstub at %d", front, j, i)
		}
	}
	if !slices.Contains(caddy.ListPlugins()["others"], "dns.dotstub") {
		t.Errorf("dns.dotstub is not among the registered plugins: %v", caddy.ListPlugins()["others"])
	}
}

func TestInsertBefore(t *testing.T) {
	in := []string{"a", "forward", "b"}
	if got := insertBefore(in, "x", "forward"); !slices.Equal(got, []string{"a", "x", "forward", "b"}) {
		t.Errorf("got %v", got)
	}
	if got := insertBefore(in, "x", "missing"); !slices.Equal(got, []string{"a", "forward", "b", "x"}) {
		t.Errorf("got %v", got)
	}
	if !slices.Equal(in, []string{"a", "forward", "b"}) {
		t.Errorf("input changed: %v", in)
	}
}

func count(s []string, v string) (n int) {
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
