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

package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	promlabels "github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// AgentsCLI is the `agents` admin command: it talks to the server's admin
// API with an admin client certificate or an admin token. On the server
// host, --data.dir is enough: the CA is trusted from it and a short-lived
// admin token is minted with its token key.
type AgentsCLI struct {
	ServerURL string
	// DataDir is the server's data directory.
	DataDir string
	// DataDirIsDefault says DataDir is the default, not given by the
	// operator. It is then used only where it holds a server CA, as on the
	// server host: elsewhere the command runs with a certificate or token
	// and the system roots, as without a default.
	DataDirIsDefault bool
	CAFile           string
	CertFile         string
	KeyFile          string
	TokenFile        string
	// Output is "table" or "json".
	Output string
}

// dataDir returns the server data directory to use, "" for none.
func (c AgentsCLI) dataDir() string {
	if c.DataDirIsDefault {
		if _, err := os.Stat(filepath.Join(c.DataDir, ca.CertFile)); err != nil {
			return ""
		}
	}
	return c.DataDir
}

func (c AgentsCLI) client() (*discovery.AdminClient, error) {
	dataDir := c.dataDir()
	caFile := c.CAFile
	if caFile == "" && dataDir != "" {
		caFile = filepath.Join(dataDir, ca.CertFile)
	}
	// The admin token and certificate go only to a peer with a serving
	// certificate: never to an enrolled host posing as the server.
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, VerifyConnection: client.VerifyServerRole}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		tlsCfg.RootCAs = pool
	}
	ac := &discovery.AdminClient{BaseURL: c.ServerURL}
	switch {
	case c.CertFile != "" || c.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	case c.TokenFile != "":
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token: %w", err)
		}
		ac.Token = strings.TrimSpace(string(tok))
	case dataDir != "":
		tok, err := CreateToken(dataDir, ca.TokenSpec{Scope: ca.ScopeAdmin, TTL: 5 * time.Minute})
		if err != nil {
			return nil, err
		}
		ac.Token = tok
	case c.DataDirIsDefault:
		return nil, fmt.Errorf("no server data directory at --data.dir=%s (the default): on the server host give its --data.dir, elsewhere --tls.cert-file/--tls.key-file or --token-file", c.DataDir)
	default:
		return nil, errors.New("give --tls.cert-file/--tls.key-file, --token-file, or --data.dir on the server host")
	}
	ac.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	return ac, nil
}

// List prints every agent.
func (c AgentsCLI) List(ctx context.Context, w io.Writer) error {
	ac, err := c.client()
	if err != nil {
		return err
	}
	agents, err := ac.ListAgents(ctx)
	if err != nil {
		return c.explain(err)
	}
	return c.print(w, agents)
}

// Revoke revokes an agent, named by id or hostname, and prints it.
func (c AgentsCLI) Revoke(ctx context.Context, idOrHostname string, w io.Writer) error {
	ac, err := c.client()
	if err != nil {
		return err
	}
	id, err := c.resolve(ctx, ac, idOrHostname)
	if err != nil {
		return err
	}
	v, err := ac.Revoke(ctx, id)
	if err != nil {
		return c.explain(err)
	}
	return c.print(w, []discovery.AgentView{*v})
}

// Maintenance switches the maintenance flag of an agent, named by id or
// hostname, and prints it.
func (c AgentsCLI) Maintenance(ctx context.Context, idOrHostname string, on bool, w io.Writer) error {
	ac, err := c.client()
	if err != nil {
		return err
	}
	id, err := c.resolve(ctx, ac, idOrHostname)
	if err != nil {
		return err
	}
	v, err := ac.SetMaintenance(ctx, id, on)
	if err != nil {
		return c.explain(err)
	}
	return c.print(w, []discovery.AgentView{*v})
}

// resolve turns a hostname into the agent id the admin API takes: an
// operator knows the host, not the random id. An id wins over a hostname;
// a hostname that several agents share is an error listing them.
func (c AgentsCLI) resolve(ctx context.Context, ac *discovery.AdminClient, arg string) (string, error) {
	agents, err := ac.ListAgents(ctx)
	if err != nil {
		return "", c.explain(err)
	}
	var matches []discovery.AgentView
	for _, a := range agents {
		if a.ID == arg {
			return arg, nil
		}
		if strings.EqualFold(a.Hostname, arg) {
			matches = append(matches, a)
		}
	}
	switch len(matches) {
	case 0:
		return arg, nil // the server answers for an unknown id
	case 1:
		return matches[0].ID, nil
	}
	var b strings.Builder
	for _, m := range matches {
		fmt.Fprintf(&b, "\n  %s  %s  %s", m.ID, m.State, m.Address)
	}
	return "", fmt.Errorf("%d agents have hostname %q; give one of their ids:%s", len(matches), arg, b.String())
}

// explain adds what to check to an error that an operator can fix from
// the command line.
func (c AgentsCLI) explain(err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%w: is the server running at %s? Set --server.url to its address", err, c.ServerURL)
	}
	return err
}

func (c AgentsCLI) print(w io.Writer, agents []discovery.AgentView) error {
	if c.Output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(agents)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOSTNAME\tADDRESS\tSTATE\tLAST SEEN\tCERT EXPIRES\tEXPORTERS\tLABELS\tEXPORTER ERRORS")
	now := time.Now()
	for _, a := range agents {
		exporters, failures := exporterColumns(a, now)
		labels := make([]string, 0, a.Labels.Len())
		a.Labels.Range(func(l promlabels.Label) { labels = append(labels, printable(l.Name)+"="+printable(l.Value)) })
		fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s\t%s ago\t%s\t%s\t%s\t%s\n",
			printable(a.ID), printable(a.Hostname), printable(a.Address), a.Port, printable(string(a.State)),
			now.Sub(a.LastSeen).Round(time.Second), a.CertNotAfter.UTC().Format(time.RFC3339),
			orDash(exporters), orDash(strings.Join(labels, ",")), orDash(failures))
	}
	return tw.Flush()
}

// exporterColumns gives an agent's exporters as name:state and, for those
// that are down, why and since when. An exporter the agent reports nothing
// of (an agent of 0.1.0, or a server of 0.1.0 that keeps no health) is
// unknown.
func exporterColumns(a discovery.AgentView, now time.Time) (exporters, failures string) {
	var names, errs []string
	for _, e := range a.Exporters {
		h := protocol.ExporterHealth{State: protocol.ExporterUnknown}
		for _, x := range a.ExporterHealth {
			if x.Name == e.Name {
				h = x
				break
			}
		}
		names = append(names, printable(e.Name)+":"+printable(h.State))
		if h.State == protocol.ExporterDown {
			msg := printable(e.Name) + ": " + printable(h.Reason)
			if !h.Since.IsZero() {
				msg += " (for " + now.Sub(h.Since).Round(time.Second).String() + ")"
			}
			errs = append(errs, msg)
		}
	}
	return strings.Join(names, ","), strings.Join(errs, "; ")
}

// printable makes a value from the registry safe for a terminal table.
// Label values may hold any UTF-8, including escape sequences that would
// recolor, move the cursor in or rewrite the operator's terminal, and
// tabs or newlines that would forge columns or rows. Printable characters,
// non-ASCII letters included, stay as they are; every other rune is written
// as strconv.Quote writes it (\x1b, \n, \u202e), invalid UTF-8 as \xNN
// bytes, and a backslash as \\ so that the output is unambiguous.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r == '\\' || r == utf8.RuneError || !strconv.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case strconv.IsPrint(r):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r) // '\x1b', with its quotes
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
