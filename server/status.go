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
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/common/version"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// maxStatusRows bounds the table: a page of 100,000 rows helps nobody and
// costs the server; the filters narrow it instead.
const maxStatusRows = 500

// maxHostFilter bounds the hostname filter: no hostname is longer.
const maxHostFilter = 253

// refreshChoices are the auto-refresh periods the page offers, in seconds.
func refreshChoices() []int { return []int{10, 30, 60, 300} }

//go:embed status.html
var statusFS embed.FS

// statusTemplate is parsed once; html/template escapes every agent-supplied
// string for its context, so hostile hostnames and labels stay text.
var statusTemplate = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return humanDuration(now.Sub(t)) + " ago"
	},
	"until": func(now, t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		d := t.Sub(now)
		if d < 0 {
			return "expired " + humanDuration(-d) + " ago"
		}
		return "in " + humanDuration(d)
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
}).ParseFS(statusFS, "status.html"))

// statusCSP is the page's Content-Security-Policy unless the web config
// sets one: nothing but its own inline style (by hash), no script, forms
// to itself only. The page needs no more: auto-refresh is a meta refresh.
var statusCSP = func() string {
	page, err := statusFS.ReadFile("status.html")
	if err != nil {
		panic(err)
	}
	_, rest, _ := strings.Cut(string(page), "<style>")
	style, _, _ := strings.Cut(rest, "</style>")
	sum := sha256.Sum256([]byte(style))
	return "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) +
		"'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
}()

// humanDuration writes d to the second or, past an hour, the minute, past
// two days the hour: "3m12s", "5h7m", "6d4h".
func humanDuration(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		d = d.Round(time.Hour)
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	case d >= time.Minute:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	}
	return d.Round(time.Second).String()
}

// fleetSummarizer is what the status page needs of the registry.
type fleetSummarizer interface {
	SummarizeMatching(f discovery.SummaryFilter, limit int) discovery.Summary
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
	// sdReadable says whether the request could read http_sd itself (a
	// discovery or admin client certificate, or anonymous http_sd): only
	// then is the http_sd link more than a 401. Nil means never.
	sdReadable func(*http.Request) bool
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
	Exporters []exporterCell
	Labels    []string
}

// exporterCell is one exporter of a row with what its agent last reported.
type exporterCell struct {
	Name, State, Reason string
	Since, LastResult   time.Time
}

type stateCount struct {
	State    discovery.AgentState
	Count    int
	Selected bool
	Href     string
}

// statusQuery is the page's query: its filters and the auto-refresh.
type statusQuery struct {
	State        discovery.AgentState
	Host         string
	Label        string // name=value as typed
	ExporterDown bool
	Refresh      int // seconds, 0 for off
}

type statusData struct {
	// Hidden says that the request may not see the agents, only counts.
	Hidden    bool
	Version   string
	Now       time.Time
	Total     int
	Counts    []stateCount
	AllHref   string
	Query     statusQuery
	Filtered  bool
	States    []discovery.AgentState
	Matching  int
	Rows      []statusRow
	Truncated bool
	MaxRows   int
	Links     []statusLink
	// SDLink says whether the http_sd link works for this reader; when it
	// does not, the page says how to fetch it instead.
	SDLink bool
	// Refreshes are the auto-refresh choices, each with the link that
	// selects it.
	Refreshes []refreshChoice
	// Consumers are the http_sd fetches by consumer and scrape shard.
	Consumers []discovery.ConsumerFetch
}

type statusLink struct{ Address, Text, Description string }

type refreshChoice struct {
	Text     string
	Href     string
	Selected bool
}

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
	q, err := parseStatusQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	data := p.data(q, p.showFleet != nil && p.showFleet(r))
	data.SDLink = !data.Hidden && p.sdReadable != nil && p.sdReadable(r)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if w.Header().Get("Content-Security-Policy") == "" {
		w.Header().Set("Content-Security-Policy", statusCSP)
	}
	if err := statusTemplate.Execute(w, data); err != nil {
		// The header is out; all that is left is to say so in the log.
		p.logger.Error("Rendering the status page failed", "err", err)
	}
}

// parseStatusQuery reads and bounds the page's query parameters. Errors
// quote nothing the client sent beyond a short, truncated piece.
func parseStatusQuery(v url.Values) (statusQuery, error) {
	var q statusQuery
	q.State = discovery.AgentState(v.Get("state"))
	if q.State != "" && !slices.Contains(discovery.AgentStates(), q.State) {
		return q, errors.New("unknown state: use one of " + statesList())
	}
	q.Host = strings.TrimSpace(v.Get("host"))
	if len(q.Host) > maxHostFilter || !utf8.ValidString(q.Host) {
		return q, fmt.Errorf("host: at most %d bytes of UTF-8", maxHostFilter)
	}
	q.Label = strings.TrimSpace(v.Get("label"))
	if q.Label != "" {
		name, value, ok := strings.Cut(q.Label, "=")
		if !ok {
			return q, errors.New("label: use name=value")
		}
		if err := protocol.ValidateLabels(map[string]string{name: value}); err != nil {
			return q, fmt.Errorf("label: %w", err)
		}
	}
	switch v.Get("exporters") {
	case "":
	case "down":
		q.ExporterDown = true
	default:
		return q, errors.New("exporters: the only value is down")
	}
	if s := v.Get("refresh"); s != "" && s != "off" {
		n, err := strconv.Atoi(s)
		if err != nil || !slices.Contains(refreshChoices(), n) {
			return q, fmt.Errorf("refresh: use off or one of %v seconds", refreshChoices())
		}
		q.Refresh = n
	}
	return q, nil
}

// href is the page's address with q's parameters, to keep them in links.
func (q statusQuery) href() string {
	v := url.Values{}
	if q.State != "" {
		v.Set("state", string(q.State))
	}
	if q.Host != "" {
		v.Set("host", q.Host)
	}
	if q.Label != "" {
		v.Set("label", q.Label)
	}
	if q.ExporterDown {
		v.Set("exporters", "down")
	}
	if q.Refresh != 0 {
		v.Set("refresh", strconv.Itoa(q.Refresh))
	}
	if len(v) == 0 {
		return "/"
	}
	return "/?" + v.Encode()
}

func (q statusQuery) filter() discovery.SummaryFilter {
	f := discovery.SummaryFilter{State: q.State, Hostname: q.Host, ExporterDown: q.ExporterDown}
	f.LabelName, f.LabelValue, _ = strings.Cut(q.Label, "=")
	return f
}

func statesList() string {
	names := make([]string, 0, len(discovery.AgentStates()))
	for _, s := range discovery.AgentStates() {
		names = append(names, string(s))
	}
	return strings.Join(names, ", ")
}

func (p *statusPage) data(q statusQuery, showFleet bool) statusData {
	limit := maxStatusRows
	f := q.filter()
	if !showFleet {
		// Hostnames and labels are the fleet's: who may not see it may
		// not probe it with filters either.
		limit, f = 0, discovery.SummaryFilter{State: q.State}
	}
	sum := p.registry.SummarizeMatching(f, limit)
	all := q
	all.State = ""
	d := statusData{
		Hidden:    !showFleet,
		Version:   version.Version,
		Now:       p.now(),
		Total:     sum.Total,
		AllHref:   all.href(),
		Query:     q,
		Filtered:  q.Host != "" || q.Label != "" || q.ExporterDown,
		States:    discovery.AgentStates(),
		Matching:  sum.Matching,
		Truncated: sum.Matching > len(sum.Agents),
		MaxRows:   maxStatusRows,
		Links: []statusLink{
			{protocol.PathCA, "CA certificate", ""},
			{"/metrics", "Metrics", ""},
		},
	}
	for _, a := range sum.Agents {
		d.Rows = append(d.Rows, newStatusRow(a))
	}
	d.Consumers = p.consumerFetches(showFleet)
	for _, s := range discovery.AgentStates() {
		sq := q
		sq.State = s
		d.Counts = append(d.Counts, stateCount{State: s, Count: sum.Counts[s], Selected: s == q.State, Href: sq.href()})
	}
	off := q
	off.Refresh = 0
	d.Refreshes = append(d.Refreshes, refreshChoice{Text: "off", Href: off.href(), Selected: q.Refresh == 0})
	for _, n := range refreshChoices() {
		rq := q
		rq.Refresh = n
		text := strconv.Itoa(n) + "s"
		if n%60 == 0 {
			text = strconv.Itoa(n/60) + "m"
		}
		d.Refreshes = append(d.Refreshes, refreshChoice{Text: text, Href: rq.href(), Selected: q.Refresh == n})
	}
	return d
}

func newStatusRow(a discovery.AgentView) statusRow {
	row := statusRow{AgentView: a}
	for _, e := range a.Exporters {
		c := exporterCell{Name: e.Name, State: protocol.ExporterUnknown}
		for _, h := range a.ExporterHealth {
			if h.Name == e.Name {
				c.State, c.Reason, c.Since, c.LastResult = h.State, h.Reason, h.Since, h.LastResult
				break
			}
		}
		row.Exporters = append(row.Exporters, c)
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
