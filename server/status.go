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
	"embed"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/version"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// maxStatusRows bounds the table: a page of 100,000 rows helps nobody and
// costs the server; the state filter narrows it instead.
const maxStatusRows = 500

//go:embed status.html
var statusFS embed.FS

// statusTemplate is parsed once; html/template escapes every agent-supplied
// string for its context, so hostile hostnames and labels stay text.
var statusTemplate = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return now.Sub(t).Round(time.Second).String() + " ago"
	},
	"until": func(now, t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		d := t.Sub(now).Round(time.Minute)
		if d < 0 {
			return "expired " + (-d).String() + " ago"
		}
		return "in " + d.String()
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
}).ParseFS(statusFS, "status.html"))

// fleetSummarizer is what the status page needs of the registry.
type fleetSummarizer interface {
	Summarize(state discovery.AgentState, limit int) discovery.Summary
}

// statusPage is the server's landing page: the fleet at a glance. It reads
// the registry's memory only, never the store.
//
// The agent table is a target list, which is never shown anonymously:
// showFleet decides per request (basic auth from the web config, a
// discovery or admin client certificate, or --sd.allow-anonymous). Everyone
// else sees the counts by state and how to get in.
type statusPage struct {
	registry  fleetSummarizer
	now       func() time.Time
	logger    *slog.Logger
	showFleet func(*http.Request) bool
	// consumers lists who fetched http_sd; nil shows no such section.
	consumers consumerLister
}

// consumerLister is what the status page needs of the http_sd consumer log.
type consumerLister interface {
	Fetches() []discovery.ConsumerFetch
}

// fleetReader is the status page's default showFleet: the request
// authenticated with basic auth, or with a client certificate the API itself
// accepts for http_sd (a discovery or admin certificate of the CA: the web
// config's client_ca_file may trust other CAs too).
func fleetReader(certAllowed func(*http.Request) bool) func(*http.Request) bool {
	return func(r *http.Request) bool {
		if _, ok := web.BasicAuthUser(r); ok {
			return true
		}
		return certAllowed(r)
	}
}

type statusRow struct {
	discovery.AgentView
	Exporters []string
	Labels    []string
}

type stateCount struct {
	State    discovery.AgentState
	Count    int
	Selected bool
}

type statusData struct {
	// Hidden says that the request may not see the agents, only counts.
	Hidden    bool
	Version   string
	Now       time.Time
	Total     int
	Counts    []stateCount
	Filter    discovery.AgentState
	Matching  int
	Rows      []statusRow
	Truncated bool
	MaxRows   int
	Links     []statusLink
	// Consumers are the http_sd fetches by consumer and scrape shard.
	Consumers []discovery.ConsumerFetch
}

type statusLink struct{ Address, Text, Description string }

func (p *statusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	filter := discovery.AgentState(r.URL.Query().Get("state"))
	if filter != "" && !slices.Contains(discovery.AgentStates(), filter) {
		http.Error(w, "unknown state: use one of "+statesList(), http.StatusBadRequest)
		return
	}
	data := p.data(filter, p.showFleet != nil && p.showFleet(r))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusTemplate.Execute(w, data); err != nil {
		// The header is out; all that is left is to say so in the log.
		p.logger.Error("Rendering the status page failed", "err", err)
	}
}

func statesList() string {
	names := make([]string, 0, len(discovery.AgentStates()))
	for _, s := range discovery.AgentStates() {
		names = append(names, string(s))
	}
	return strings.Join(names, ", ")
}

func (p *statusPage) data(filter discovery.AgentState, showFleet bool) statusData {
	limit := maxStatusRows
	if !showFleet {
		limit = 0
	}
	sum := p.registry.Summarize(filter, limit)
	d := statusData{
		Hidden:    !showFleet,
		Version:   version.Version,
		Now:       p.now(),
		Total:     sum.Total,
		Filter:    filter,
		Matching:  sum.Matching,
		Truncated: sum.Matching > len(sum.Agents),
		MaxRows:   maxStatusRows,
		Links: []statusLink{
			{protocol.PathDiscovery, "http_sd targets", "needs a discovery client certificate or token"},
			{protocol.PathCA, "CA certificate", ""},
			{"/metrics", "Metrics", ""},
		},
	}
	for _, a := range sum.Agents {
		d.Rows = append(d.Rows, newStatusRow(a))
	}
	d.Consumers = p.consumerFetches(showFleet)
	for _, s := range discovery.AgentStates() {
		d.Counts = append(d.Counts, stateCount{State: s, Count: sum.Counts[s], Selected: s == filter})
	}
	return d
}

func newStatusRow(a discovery.AgentView) statusRow {
	row := statusRow{AgentView: a}
	for _, e := range a.Exporters {
		row.Exporters = append(row.Exporters, e.Name)
	}
	a.Labels.Range(func(l labels.Label) { row.Labels = append(row.Labels, l.Name+"="+l.Value) })
	return row
}

// consumerFetches is the "Prometheus servers" section: who fetched which
// scrape shard and when. Names of Prometheus servers and their queries are
// shown to the same readers as the agent list.
func (p *statusPage) consumerFetches(showFleet bool) []discovery.ConsumerFetch {
	if !showFleet || p.consumers == nil {
		return nil
	}
	return p.consumers.Fetches()
}
