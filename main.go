// Command baremetal_sd is the discovery server and the host agent of
// baremetal_sd: Prometheus service discovery, certificates and relaying for
// bare-metal fleets.
package main

import (
	"fmt"
	"os"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/version"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	app := kingpin.New("baremetal_sd", "Prometheus service discovery, certificates and relaying for bare-metal fleets.")
	app.Version(version.Print("baremetal_sd"))
	app.HelpFlag.Short('h')
	if _, err := app.Parse(args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}
