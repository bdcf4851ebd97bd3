// Copyright The baremetal_sd Authors
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

// Command baremetal_sd-bench is the load generator behind BENCHMARKS.md. It
// measures a discovery server running on this machine and is built apart
// from the release binary, which does not carry it:
//
//	go build -o baremetal_sd-bench ./bench/cmd/baremetal_sd-bench
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"

	"github.com/baremetal-sd/baremetal_sd/bench"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	app := kingpin.New("baremetal_sd-bench", "Load generator for baremetal_sd's BENCHMARKS.md; targets a server on this machine only.")
	app.Version(version.Print("baremetal_sd-bench"))
	app.HelpFlag.Short('h')
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)
	cmds := bench.AddCommands(app)

	cmd, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "baremetal_sd-bench: %v, try --help\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	handled, err := cmds.Run(ctx, cmd, promslog.New(logConfig))
	if !handled {
		fmt.Fprintf(os.Stderr, "baremetal_sd-bench: unknown command %q\n", cmd)
		return 2
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "baremetal_sd-bench: %s: %v\n", cmd, err)
		return 1
	}
	return 0
}
