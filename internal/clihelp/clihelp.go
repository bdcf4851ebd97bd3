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

// Package clihelp reads kingpin's --help output of the baremetal_sd binary:
// the commands it lists and the flags of each. Tests use it to hold the
// documentation, the packaged defaults and the provisioning example to the
// flags the binary really has.
package clihelp

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
)

// flagLine matches a flag in the Flags: section: "  -h, --[no-]help",
// "      --data.dir=DATA.DIR". The name ends at "=", white space or the end.
// Descriptions, which may name flags too, are indented further.
var flagLine = regexp.MustCompile(`^(?:  -\w, |      )--(?:\[no-\])?([A-Za-z0-9][A-Za-z0-9._-]*)`)

// Commands returns the commands that top-level help lists, each as the
// words to type ("agents list"), without kingpin's own "help" command.
func Commands(help string) []string {
	var cmds []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "Commands:":
			in = true
		case !in || line == "" || strings.HasPrefix(line, " "):
		default:
			var words []string
			for _, w := range strings.Fields(line) {
				if strings.HasPrefix(w, "[") || strings.HasPrefix(w, "<") || strings.HasPrefix(w, "-") {
					break
				}
				words = append(words, w)
			}
			if cmd := strings.Join(words, " "); cmd != "help" && cmd != "" {
				cmds = append(cmds, cmd)
			}
		}
	}
	return cmds
}

// Flags returns the names (without "--") of the flags in a help text's
// Flags: section, sorted.
func Flags(help string) []string {
	var flags []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "Flags:":
			in = true
		case in && line != "" && !strings.HasPrefix(line, " "):
			in = false // the next section
		case in:
			if m := flagLine.FindStringSubmatch(line); m != nil {
				flags = append(flags, m[1])
			}
		}
	}
	slices.Sort(flags)
	return slices.Compact(flags)
}

// Help runs `binary [command...] --help` and returns what it printed.
func Help(ctx context.Context, binary, command string) (string, error) {
	args := append(strings.Fields(command), "--help")
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", binary, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// CommandFlags runs the binary's help for every command it lists and
// returns each command's flags, global flags included.
func CommandFlags(ctx context.Context, binary string) (map[string][]string, error) {
	top, err := Help(ctx, binary, "")
	if err != nil {
		return nil, err
	}
	cmds := Commands(top)
	if len(cmds) == 0 {
		return nil, fmt.Errorf("%s --help lists no commands:\n%s", binary, top)
	}
	flags := map[string][]string{"": Flags(top)}
	for _, c := range cmds {
		help, err := Help(ctx, binary, c)
		if err != nil {
			return nil, err
		}
		flags[c] = Flags(help)
	}
	return flags, nil
}
