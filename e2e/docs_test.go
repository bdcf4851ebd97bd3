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

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/internal/clihelp"
)

// kingpinBuiltins are flags kingpin adds to every application without
// listing them under Flags; the docs may name them.
var kingpinBuiltins = []string{"help-long", "help-man", "completion-bash", "completion-script-bash", "completion-script-zsh"}

// docFlag finds a flag named in prose or code: "--name" not preceded by a
// word character or a dash.
var docFlag = regexp.MustCompile(`(?:^|[^\w-])--([a-z][a-z0-9._-]*[a-z0-9])`)

// commandFlags runs --help of every command the built binary lists.
func commandFlags(t *testing.T) map[string][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	flags, err := clihelp.CommandFlags(ctx, binary)
	if err != nil {
		t.Fatal(err)
	}
	return flags
}

// TestDocs_ConfigurationFlags holds docs/configuration.md to the binary:
// every flag that `baremetal_sd COMMAND --help` lists is named in the
// page's section for that command (global flags in "Global flags"), and
// every flag the page names exists. When a flag is added, this fails
// naming it and the section it belongs in.
func TestDocs_ConfigurationFlags(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	const page = "docs/configuration.md"
	data, err := os.ReadFile(filepath.Join(root, page))
	if err != nil {
		t.Fatal(err)
	}
	flags := commandFlags(t)
	sections := flagSections(string(data))

	all := slices.Clone(kingpinBuiltins)
	for _, fs := range flags {
		all = append(all, fs...)
	}
	global := flags[""]
	for cmd, fs := range flags {
		name, key := "Global flags", ""
		if cmd != "" {
			key = sectionFor(cmd, sections)
			name = "`baremetal_sd " + key + "`"
		}
		named, ok := sections[key]
		if !ok {
			t.Errorf("%s has no section %q for `baremetal_sd %s` (## `baremetal_sd %s`)", page, name, cmd, cmd)
			continue
		}
		for _, f := range fs {
			if cmd != "" && slices.Contains(global, f) {
				continue
			}
			if !slices.Contains(named, f) {
				t.Errorf("%s, section %s: flag --%s is missing (`baremetal_sd %s --help` lists it)", page, name, f, cmd)
			}
		}
	}
	for _, m := range docFlag.FindAllStringSubmatch(string(data), -1) {
		if f := m[1]; !slices.Contains(all, f) && !slices.Contains(all, strings.TrimPrefix(f, "no-")) {
			t.Errorf("%s names --%s, which no command's --help lists", page, f)
		}
	}
}

// flagSections maps each "## `baremetal_sd COMMAND`" section of the page to
// the flags it names, "" to those of "## Global flags".
func flagSections(page string) map[string][]string {
	sections := make(map[string][]string)
	key, in := "", false
	for _, line := range strings.Split(page, "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			in = true
			switch {
			case h == "Global flags":
				key = ""
			case strings.HasPrefix(h, "`baremetal_sd ") && strings.HasSuffix(h, "`"):
				key = strings.TrimSuffix(strings.TrimPrefix(h, "`baremetal_sd "), "`")
			default:
				in = false
			}
			if in {
				sections[key] = sections[key][:len(sections[key]):len(sections[key])]
			}
			continue
		}
		if !in {
			continue
		}
		for _, m := range docFlag.FindAllStringSubmatch(line, -1) {
			sections[key] = append(sections[key], m[1])
		}
	}
	return sections
}

// sectionFor is the section that documents a command: its own, or that
// of the nearest parent command ("agents" for "agents list").
func sectionFor(cmd string, sections map[string][]string) string {
	for c := cmd; c != ""; {
		if _, ok := sections[c]; ok {
			return c
		}
		i := strings.LastIndex(c, " ")
		if i < 0 {
			break
		}
		c = c[:i]
	}
	return cmd
}

// TestDocs_Commands checks every baremetal_sd command line in the shell
// blocks of the README and docs/: the command exists and takes every flag
// given to it. The README's quick start is the script TestQuickstart runs,
// and the make targets it names exist.
func TestDocs_Commands(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	flags := commandFlags(t)
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append([]string{filepath.Join(root, "README.md")}, pages...)
	for _, p := range pages {
		rel, _ := filepath.Rel(root, p)
		t.Run(rel, func(t *testing.T) {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range shellLines(string(data)) {
				if err := checkCommand(line, flags); err != nil {
					t.Errorf("%s: %v\n\t%s", rel, err, line)
				}
			}
		})
	}

	t.Run("quick start", func(t *testing.T) {
		readme, err := os.ReadFile(filepath.Join(root, "README.md"))
		if err != nil {
			t.Fatal(err)
		}
		lines := shellLines(section(string(readme), "## Quick start"))
		if !slices.Contains(lines, "examples/quickstart.sh") {
			t.Errorf("README's quick start does not run examples/quickstart.sh, the script TestQuickstart runs; it has %q", lines)
		}
		makefiles := ""
		for _, f := range []string{"Makefile", "Makefile.common"} {
			b, err := os.ReadFile(filepath.Join(root, f))
			if err != nil {
				t.Fatal(err)
			}
			makefiles += string(b)
		}
		var code []string
		for _, m := range regexp.MustCompile("`([^`\n]+)`").FindAllStringSubmatch(string(readme), -1) {
			code = append(code, m[1])
		}
		code = append(code, shellLines(string(readme))...)
		for _, m := range regexp.MustCompile(`(?:^|\s)make ([a-z][a-z-]*)`).FindAllStringSubmatch(strings.Join(code, "\n"), -1) {
			target := regexp.MustCompile(`(?m)^(common-)?` + regexp.QuoteMeta(m[1]) + `:`)
			if !target.MatchString(makefiles) {
				t.Errorf("README runs `make %s`, a target the Makefiles do not have", m[1])
			}
		}
		if !strings.Contains(string(readme), "make test") {
			t.Error("README does not say `make test`")
		}
	})
}

// section returns a markdown section from its heading to the next heading
// of the same level.
func section(page, heading string) string {
	i := strings.Index(page, "\n"+heading+"\n")
	if i < 0 {
		return ""
	}
	s := page[i+len(heading)+2:]
	if j := strings.Index(s, "\n## "); j >= 0 {
		s = s[:j]
	}
	return s
}

// shellLines returns the commands of the ```sh blocks, continuation lines
// joined and comments cut.
func shellLines(page string) []string {
	var lines []string
	for _, m := range regexp.MustCompile("(?s)```(?:sh|shell|bash|console)\n(.*?)```").FindAllStringSubmatch(page, -1) {
		block := strings.ReplaceAll(m[1], "\\\n", " ")
		for _, l := range strings.Split(block, "\n") {
			if i := strings.Index(l, " #"); i >= 0 {
				l = l[:i]
			}
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, strings.Join(strings.Fields(l), " "))
			}
		}
	}
	return lines
}

// checkCommand checks the baremetal_sd invocations of one shell line.
func checkCommand(line string, flags map[string][]string) error {
	var errs []string
	for _, part := range regexp.MustCompile(`&&|\|\||[|;>]`).Split(line, -1) {
		words := strings.Fields(part)
		i := 0
		if i < len(words) && words[i] == "sudo" {
			for i++; i < len(words) && strings.HasPrefix(words[i], "-"); i++ {
				if words[i] == "-u" { // sudo -u USER
					i++
				}
			}
		}
		if i >= len(words) || (words[i] != "baremetal_sd" && !strings.HasSuffix(words[i], "/baremetal_sd")) {
			continue
		}
		start := i + 1
		if start >= len(words) || strings.HasPrefix(words[start], "--version") {
			continue
		}
		cmd := ""
		var given []string
		for _, w := range words[start:] {
			if f, ok := strings.CutPrefix(w, "--"); ok {
				name, _, _ := strings.Cut(f, "=")
				given = append(given, name)
				continue
			}
			if strings.HasPrefix(w, "-") {
				continue
			}
			next := strings.TrimSpace(cmd + " " + w)
			if _, ok := flags[next]; ok || hasSubcommand(flags, next) {
				cmd = next
			}
		}
		known, ok := flags[cmd]
		if !ok || cmd == "" {
			errs = append(errs, fmt.Sprintf("`%s` names no command `baremetal_sd --help` lists", strings.Join(words[start-1:], " ")))
			continue
		}
		for _, f := range given {
			if !slices.Contains(known, f) && !slices.Contains(known, strings.TrimPrefix(f, "no-")) {
				errs = append(errs, fmt.Sprintf("`baremetal_sd %s` has no flag --%s", cmd, f))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// hasSubcommand reports whether cmd is the parent of a listed command
// ("agents" of "agents list").
func hasSubcommand(flags map[string][]string, cmd string) bool {
	for c := range flags {
		if strings.HasPrefix(c, cmd+" ") {
			return true
		}
	}
	return false
}
