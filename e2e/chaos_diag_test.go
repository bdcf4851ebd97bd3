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
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// What the chaos harness records when a healthy agent is missing: the
// three places that decide whether Prometheus scrapes it, read at once, so
// that a gap in the log says where it began (finding 11 of RELIABILITY.md
// was a gap nobody could explain afterwards).

// maxDiagnostics bounds the diagnostics a run keeps.
const maxDiagnostics = 40

// diagnose records what every server and Prometheus say about agent a,
// which a check found missing (why): each server's http_sd entries for it
// (present, with which labels), its registry's view (state, last
// heartbeat, when it expires), Prometheus' targets of its address (active
// or dropped, health, last scrape, last error), the harness's fault windows
// on it and the end of its log. Once per agent and gap: again only after
// a heartbeat grace.
func (c *chaos) diagnose(ctx context.Context, a *chaosAgent, why string) {
	now := time.Now()
	c.mu.Lock()
	last, seen := c.diagnosed[a.Hostname]
	if seen && now.Sub(last) < c.heartbeatGrace || len(c.diagnostics) >= maxDiagnostics {
		c.mu.Unlock()
		return
	}
	c.diagnosed[a.Hostname] = now
	c.mu.Unlock()

	var b strings.Builder
	fmt.Fprintf(&b, "%s: agent %s (%s, %s): %s\n", now.Sub(c.faultStart).Round(time.Second), a.Hostname, a.ID, a.Addr, why)
	a.mu.Lock()
	fmt.Fprintf(&b, "  harness: %s\n", describeWindows(now, a.netFault, a.nodeFault))
	a.mu.Unlock()
	for _, s := range c.servers {
		if !s.available() {
			fmt.Fprintf(&b, "  server %s: under a fault\n", s.name)
			continue
		}
		fmt.Fprintf(&b, "  server %s http_sd: %s\n", s.name, c.sdEntries(ctx, s, a.ID))
		fmt.Fprintf(&b, "  server %s registry: %s\n", s.name, c.registryView(ctx, s, a.ID, now))
	}
	for _, l := range c.promTargetsOf(ctx, a.Addr, now) {
		fmt.Fprintf(&b, "  prometheus: %s\n", l)
	}
	fmt.Fprintf(&b, "  agent log:\n")
	for _, l := range strings.Split(strings.TrimSpace(a.log.tail(1500)), "\n") {
		fmt.Fprintf(&b, "    %s\n", l)
	}
	msg := strings.TrimRight(b.String(), "\n")
	c.t.Logf("gap diagnosed: %s", msg)
	c.mu.Lock()
	c.diagnostics = append(c.diagnostics, msg)
	c.mu.Unlock()
}

// describeWindows says whether the agent's network and exporter faults are
// on, or how long ago they ended.
func describeWindows(now time.Time, netW, nodeW faultWindow) string {
	desc := func(w faultWindow) string {
		switch {
		case w.active > 0:
			return "on"
		case w.ended.IsZero():
			return "never"
		default:
			return fmt.Sprintf("ended %s ago", now.Sub(w.ended).Round(100*time.Millisecond))
		}
	}
	return fmt.Sprintf("network fault %s, exporter fault %s", desc(netW), desc(nodeW))
}

// sdEntries lists the target groups server s's http_sd has for agent id.
func (c *chaos) sdEntries(ctx context.Context, s *chaosServer, id string) string {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := doRequest(rctx, c.sd, http.MethodGet, s.URL+protocol.PathDiscovery, "", nil)
	if err != nil {
		return err.Error()
	}
	if resp.Status != http.StatusOK {
		return statusOf(resp)
	}
	groups, err := checkSDBody(resp.Body)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, g := range groups {
		if g.Labels[protocol.MetaAgentID] != id {
			continue
		}
		var ls []string
		for _, k := range slices.Sorted(maps.Keys(g.Labels)) {
			if k != protocol.MetaAgentID {
				ls = append(ls, strings.TrimPrefix(k, protocol.MetaPrefix)+"="+g.Labels[k])
			}
		}
		out = append(out, fmt.Sprintf("%v {%s}", g.Targets, strings.Join(ls, ", ")))
	}
	if len(out) == 0 {
		return fmt.Sprintf("absent (%d groups)", len(groups))
	}
	return "present: " + strings.Join(out, "; ")
}

// registryView is server s's view of agent id: state, last heartbeat,
// certificate and when the agent expires there.
func (c *chaos) registryView(ctx context.Context, s *chaosServer, id string, now time.Time) string {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := doRequest(rctx, s.anon, http.MethodGet, s.URL+protocol.PathAgents, c.adminTok, nil)
	if err != nil {
		return err.Error()
	}
	if resp.Status != http.StatusOK {
		return statusOf(resp)
	}
	var views []discovery.AgentView
	if err := json.Unmarshal(resp.Body, &views); err != nil {
		return err.Error()
	}
	for _, v := range views {
		if v.ID != id {
			continue
		}
		expires := v.LastSeen.Add(c.ttl)
		if v.GraceUntil.After(expires) {
			expires = v.GraceUntil
		}
		return fmt.Sprintf("state %s, last heartbeat %s ago, expires %s, certificate expires %s",
			v.State, now.Sub(v.LastSeen).Round(100*time.Millisecond), relTime(now, expires), relTime(now, v.CertNotAfter))
	}
	return fmt.Sprintf("not listed (%d agents)", len(views))
}

// relTime describes t from now: "in 3s" or "4s ago".
func relTime(now, t time.Time) string {
	if d := t.Sub(now); d >= 0 {
		return "in " + d.Round(100*time.Millisecond).String()
	}
	return now.Sub(t).Round(100*time.Millisecond).String() + " ago"
}

// promTargetsOf describes Prometheus' targets of an agent address, active
// and dropped.
func (c *chaos) promTargetsOf(ctx context.Context, addr string, now time.Time) []string {
	ts, err := c.prom.targets(ctx)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, tg := range ts.Active {
		if tg.Labels["instance"] != addr {
			continue
		}
		scraped := "never scraped"
		if !tg.LastScrape.IsZero() {
			scraped = fmt.Sprintf("last scrape %s ago, took %.3fs", now.Sub(tg.LastScrape).Round(100*time.Millisecond), tg.LastScrapeDuration)
		}
		out = append(out, fmt.Sprintf("active %s/%s: %s, %s, last error %q", tg.ScrapePool, tg.Labels["exporter"], tg.Health, scraped, tg.LastError))
	}
	dropped := 0
	for _, tg := range ts.Dropped {
		if tg.DiscoveredLabels["__address__"] == addr {
			dropped++
		}
	}
	if len(out) == 0 {
		out = append(out, "no active target")
	}
	return append(out, fmt.Sprintf("%d dropped targets of the address", dropped))
}
