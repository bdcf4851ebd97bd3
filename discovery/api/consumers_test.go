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

package api

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd/httpsdtest"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestAPI_DiscoveryShards: the handler serves a scrape shard, refuses bad
// shard parameters with a JSON 400, answers If-None-Match with 304, and
// records who asked for which shard.
func TestAPI_DiscoveryShards(t *testing.T) {
	h := newAPIHarness(t)
	var ids []string
	for range 6 {
		resp, _ := h.enroll(ca.TokenSpec{}, nil)
		ids = append(ids, resp.AgentID)
	}
	cert := h.clientCert(ca.RoleDiscovery)
	c := h.client(&cert)
	c.Transport.(*http.Transport).DisableCompression = true
	tok := h.token(ca.TokenSpec{Scope: ca.ScopeDiscovery})

	t.Run("shards partition the agents", func(t *testing.T) {
		seen := map[string]int{}
		for i := range 3 {
			rep := h.do(c, "GET", fmt.Sprintf("%s?shard=%d&shards=3", protocol.PathDiscovery, i), "", nil)
			if rep.status != http.StatusOK {
				t.Fatalf("shard %d: status %d: %s", i, rep.status, rep.body)
			}
			for _, g := range httpsdtest.DecodeGroups(t, rep.body) {
				id := g.Labels[protocol.MetaAgentID]
				if want := httpsd.ScrapeShardOf(id, 3); want != i {
					t.Errorf("agent %s in shard %d, want %d", id, i, want)
				}
				seen[id]++
			}
		}
		for _, id := range ids {
			if seen[id] != 2 { // its own metrics and one exporter
				t.Errorf("agent %s: %d groups over all shards, want 2", id, seen[id])
			}
		}
	})

	t.Run("bad parameters", func(t *testing.T) {
		for _, q := range []string{
			"shard=3&shards=3", "shard=0&shards=0", "shard=0&shards=100000", "shard=x&shards=3",
			"shard=1", "shard=0;shards=2", "shard=%zz&shards=2", "shards=2&shard=0&shard=1",
		} {
			rep := h.do(c, "GET", protocol.PathDiscovery+"?"+q, "", nil)
			var e protocol.ErrorResponse
			if rep.status != http.StatusBadRequest || json.Unmarshal(rep.body, &e) != nil || e.Error == "" {
				t.Errorf("?%s: status %d body %s, want 400 with a JSON error", q, rep.status, rep.body)
			}
			if ct := rep.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("?%s: Content-Type %q", q, ct)
			}
		}
	})

	t.Run("conditional requests", func(t *testing.T) {
		get := func(path, ifNoneMatch string, gz bool) *http.Response {
			t.Helper()
			req, _ := http.NewRequest("GET", h.srv.URL+path, nil)
			if ifNoneMatch != "" {
				req.Header.Set("If-None-Match", ifNoneMatch)
			}
			if gz {
				req.Header.Set("Accept-Encoding", "gzip")
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp
		}
		path := protocol.PathDiscovery + "?shard=1&shards=3"
		first := get(path, "", false)
		tag := first.Header.Get("ETag")
		if tag == "" {
			t.Fatal("no ETag")
		}
		if cc := first.Header.Get("Cache-Control"); cc != "private, no-cache" {
			t.Errorf("Cache-Control %q", cc)
		}
		if r := get(path, tag, false); r.StatusCode != http.StatusNotModified || r.Header.Get("ETag") != tag {
			t.Errorf("If-None-Match with the current ETag: %d, ETag %q; want 304 and %q", r.StatusCode, r.Header.Get("ETag"), tag)
		}
		gzTag := get(path, "", true).Header.Get("ETag")
		for _, tc := range []struct {
			name, path, tag string
			gz              bool
		}{
			{"gzip with the identity ETag", path, tag, true},
			{"identity with the gzip ETag", path, gzTag, false},
			{"other shard", protocol.PathDiscovery + "?shard=0&shards=3", tag, false},
			{"unsharded", protocol.PathDiscovery, tag, false},
			{"other shard count", protocol.PathDiscovery + "?shard=1&shards=2", tag, false},
		} {
			if r := get(tc.path, tc.tag, tc.gz); r.StatusCode != http.StatusOK {
				t.Errorf("%s: status %d, want 200", tc.name, r.StatusCode)
			}
		}
		// A change of any agent in the shard makes the old ETag stale.
		var target string
		for _, id := range ids {
			if httpsd.ScrapeShardOf(id, 3) == 1 {
				target = id
			}
		}
		if target == "" {
			t.Skip("no agent in shard 1")
		}
		admin := h.clientCert(ca.RoleAdmin)
		if rep := h.do(h.client(&admin), "POST", protocol.PathAgents+"/"+target+"/maintenance", "", []byte(`{"maintenance":true}`)); rep.status != http.StatusOK {
			t.Fatalf("maintenance: %d %s", rep.status, rep.body)
		}
		if r := get(path, tag, false); r.StatusCode != http.StatusOK || r.Header.Get("ETag") == tag {
			t.Errorf("after a change: status %d ETag %q, want 200 and a new ETag", r.StatusCode, r.Header.Get("ETag"))
		}
	})

	t.Run("consumers", func(t *testing.T) {
		if rep := h.do(h.client(nil), "GET", protocol.PathDiscovery+"?shard=0&shards=2", tok, nil); rep.status != http.StatusOK {
			t.Fatalf("token: %d", rep.status)
		}
		// Requests that do not authenticate as a reader are nobody's: no
		// name they carry reaches the log or the metric.
		if rep := h.do(h.client(nil), "GET", protocol.PathDiscovery+"?shard=0&shards=2", "", nil); rep.status != http.StatusUnauthorized {
			t.Fatalf("anonymous: %d", rep.status)
		}
		enrollTok := h.token(ca.TokenSpec{Scope: ca.ScopeEnroll})
		if rep := h.do(h.client(nil), "GET", protocol.PathDiscovery+"?shard=0&shards=2", enrollTok, nil); rep.status != http.StatusForbidden {
			t.Fatalf("enroll token: %d", rep.status)
		}
		agentResp, agentCert := h.enroll(ca.TokenSpec{}, nil)
		if rep := h.do(h.client(&agentCert), "GET", protocol.PathDiscovery+"?shard=0&shards=2", "", nil); rep.status != http.StatusForbidden {
			t.Fatalf("agent certificate: %d", rep.status)
		}
		for _, f := range h.consumers.Fetches() {
			if strings.Contains(f.Consumer, agentResp.AgentID) || f.Consumer == httpsd.ConsumerAnonymous {
				t.Errorf("refused request logged as %+v", f)
			}
		}
		byKey := map[string]discovery.ConsumerFetch{}
		for _, f := range h.consumers.Fetches() {
			byKey[f.Consumer+" "+f.Shard] = f
		}
		certRow, ok := byKey["cert:prometheus 1/3"]
		if !ok || certRow.LastStatus != http.StatusOK || certRow.Query != "shard=1&shards=3" || certRow.LastFetch.IsZero() {
			t.Errorf("certificate consumer of shard 1/3: %+v (all: %v)", certRow, byKey)
		}
		if _, ok := byKey["cert:prometheus invalid"]; !ok {
			t.Errorf("no row for the bad queries: %v", byKey)
		}
		var tokenRows int
		for k := range byKey {
			if strings.HasPrefix(k, "token:") && strings.HasSuffix(k, " 0/2") {
				tokenRows++
			}
		}
		if tokenRows != 1 || len(byKey) != 7 { // cert: 0/3 1/3 2/3 1/2 all invalid; token: 0/2
			t.Errorf("rows %v, want 6 for the certificate and 1 for the token", byKey)
		}
		if got := testutil.ToFloat64(h.metrics.HTTPSDConsumerRequests.WithLabelValues("cert:prometheus", "0/3", "200")); got < 1 {
			t.Errorf("consumer_requests_total for cert:prometheus shard 0/3: %v", got)
		}
	})
}

// TestAPI_DiscoveryGzipNotModified: gzip responses carry their own ETag, and
// GET and HEAD honor it in a list of If-None-Match tags.
func TestAPI_DiscoveryGzipNotModified(t *testing.T) {
	h := newAPIHarness(t)
	h.enroll(ca.TokenSpec{}, nil)
	cert := h.clientCert(ca.RoleDiscovery)
	c := h.client(&cert)
	c.Transport.(*http.Transport).DisableCompression = true
	req, _ := http.NewRequest("GET", h.srv.URL+protocol.PathDiscovery, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	tag := resp.Header.Get("ETag")
	for _, method := range []string{"GET", "HEAD"} {
		req, _ := http.NewRequest(method, h.srv.URL+protocol.PathDiscovery, nil)
		req.Header.Set("Accept-Encoding", "gzip")
		req.Header.Set("If-None-Match", `"other", `+tag)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("%s: status %d with %d bytes, want 304 and no body", method, resp.StatusCode, len(body))
		}
		if resp.Header.Get("Vary") != "Accept-Encoding" || resp.Header.Get("ETag") != tag {
			t.Errorf("%s: 304 headers %v", method, resp.Header)
		}
	}
}
