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

package clihelp

import (
	"slices"
	"testing"
)

const topHelp = `usage: baremetal_sd [<flags>] <command> [<args> ...]

Prometheus service discovery.


Flags:
  -h, --[no-]help          Show context-sensitive help (also try --help-long and
                           --help-man).
      --log.level=info     Only log messages with the given severity or above.
                           One of: [debug, info, warn, error]

Commands:
help [<command>...]
    Show help.

server [<flags>]
    Run the discovery server.

cert issue --name=NAME --out.dir=OUT.DIR [<flags>]
    Issue a client certificate for Prometheus or an operator.

agents revoke <id>
    Revoke an agent: --no-such.flag in a description is no flag.
`

const serverHelp = `usage: baremetal_sd server [<flags>]

Run the discovery server.


Flags:
  -h, --[no-]help                Show context-sensitive help (also try
                                 --help-long and --help-man).
      --web.listen-address=:9955 ...  
                                 Addresses on which to expose metrics and web
                                 interface. Repeatable for multiple addresses.
      --data.dir="data"          Directory for the CA, token key, serving
                                 certificate and registry; with --data.dir
      --etcd.ca-file=ETCD.CA-FILE  
      --[no-]sd.allow-anonymous  Serve http_sd without a client certificate.
  -o, --output=table             Output format.

Args:
  <id>  Agent id.
`

func TestCommands_ListsTypedWords(t *testing.T) {
	got := Commands(topHelp)
	want := []string{"server", "cert issue", "agents revoke"}
	if !slices.Equal(got, want) {
		t.Errorf("Commands = %q, want %q", got, want)
	}
}

func TestFlags_Table(t *testing.T) {
	for _, tc := range []struct {
		name, help string
		want       []string
	}{
		{"top", topHelp, []string{"help", "log.level"}},
		{"server", serverHelp, []string{"data.dir", "etcd.ca-file", "help", "output", "sd.allow-anonymous", "web.listen-address"}},
		{"no flags section", "usage: x\n\nArgs:\n  --not.a-flag\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Flags(tc.help); !slices.Equal(got, tc.want) {
				t.Errorf("Flags = %q, want %q", got, tc.want)
			}
		})
	}
}
