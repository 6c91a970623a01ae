// Command coredns is CoreDNS with every standard plugin plus dotstub, which
// runs just before forward in the plugin chain.
package main

import (
	"slices"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/core/plugin" // every standard plugin
	"github.com/coredns/coredns/coremain"

	_ "github.com/dotstub/dotstub"
)

// version is this build's own version, stamped by the Makefile.
var version = "dev"

func init() {
	dnsserver.Directives = insertBefore(dnsserver.Directives, "dotstub", "forward")
	caddy.AppVersion = coremain.CoreVersion + "+dotstub-" + version
}

// insertBefore returns dirs with name inserted just before anchor, or at the
// end when anchor is missing.
func insertBefore(dirs []string, name, anchor string) []string {
	i := slices.Index(dirs, anchor)
	if i < 0 {
		i = len(dirs)
	}
	return slices.Insert(slices.Clone(dirs), i, name)
}

func main() { coremain.Run() }
