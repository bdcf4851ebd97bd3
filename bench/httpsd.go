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

package bench

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// HTTPSDConfig configures `bench httpsd`.
type HTTPSDConfig struct {
	ServerURL string
	DataDir   string
	// Count is the number of cached fetches per encoding.
	Count int
	// Changes is the number of registrations, each followed by one fetch
	// that has to rebuild; they alternate between identity and gzip.
	Changes   int
	Duration  time.Duration
	ServerPID int
	First     int
}

// fetchStats are the samples of one kind of fetch.
type fetchStats struct {
	name  string
	ttfb  durations
	total durations
	size  int64
}

// RunHTTPSD measures http_sd fetches from the cache and after a change, and
// reports the server's memory afterwards.
func RunHTTPSD(ctx context.Context, cfg HTTPSDConfig, out io.Writer) error {
	if cfg.Count <= 0 || cfg.Changes < 0 || cfg.Duration <= 0 {
		return fmt.Errorf("count and duration must be positive")
	}
	t, err := newTarget(cfg.ServerURL, cfg.DataDir)
	if err != nil {
		return err
	}
	cert, err := t.clientCert(ca.RoleDiscovery)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	deadline, _ := ctx.Deadline()
	c, err := dial(ctx, t.addr, t.tlsConfig(cert))
	if err != nil {
		return err
	}
	defer c.Close()

	plainReq := request(http.MethodGet, t.host, protocol.PathDiscovery, nil, nil)
	gzipReq := request(http.MethodGet, t.host, protocol.PathDiscovery, map[string]string{"Accept-Encoding": "gzip"}, nil)
	fetch := func(req []byte, keep bool) (reply, error) {
		r, err := c.roundTrip(req, maxSDBody, keep, deadline)
		if err == nil && r.status != http.StatusOK {
			err = &statusError{r.status, truncate(r.body)}
		}
		return r, err
	}

	var memBefore *procMem
	if cfg.ServerPID > 0 {
		m, err := procMemory(cfg.ServerPID)
		if err != nil {
			return err
		}
		memBefore = &m
	}
	// The first fetch may build the cache from scratch; it also tells how
	// many target groups there are.
	first, err := fetch(plainReq, true)
	if err != nil {
		return fmt.Errorf("first http_sd fetch: %w", err)
	}
	groups := bytes.Count(first.body, []byte(`{"targets":`))
	first.body = nil
	firstGz, err := fetch(gzipReq, true)
	if err != nil {
		return fmt.Errorf("first gzip http_sd fetch: %w", err)
	}
	if err := checkGzip(firstGz, first.bodyLen); err != nil {
		return err
	}
	firstGz.body = nil

	cached := [2]*fetchStats{{name: "cached identity"}, {name: "cached gzip"}}
	for i := 0; i < cfg.Count && ctx.Err() == nil; i++ {
		for j, req := range [][]byte{plainReq, gzipReq} {
			r, err := fetch(req, false)
			if err != nil {
				return fmt.Errorf("http_sd fetch: %w", err)
			}
			s := cached[j]
			s.ttfb = append(s.ttfb, r.ttfb)
			s.total = append(s.total, r.total)
			s.size = r.bodyLen
		}
	}

	changed := [2]*fetchStats{{name: "after change identity"}, {name: "after change gzip"}}
	if cfg.Changes > 0 {
		token, err := t.enrollToken(cfg.Duration+time.Hour, false)
		if err != nil {
			return err
		}
		for i := 0; i < cfg.Changes && ctx.Err() == nil; i++ {
			id, err := newIdentity(cfg.First + i)
			if err != nil {
				return err
			}
			rc, err := dial(ctx, t.addr, t.tlsConfig(nil))
			if err != nil {
				return err
			}
			_, err = t.register(rc, id, token, deadline)
			rc.Close()
			if err != nil {
				return fmt.Errorf("register to change the registry: %w", err)
			}
			j := i % 2
			r, err := fetch([][]byte{plainReq, gzipReq}[j], false)
			if err != nil {
				return fmt.Errorf("http_sd fetch after change: %w", err)
			}
			s := changed[j]
			s.ttfb = append(s.ttfb, r.ttfb)
			s.total = append(s.total, r.total)
			s.size = r.bodyLen
		}
	}

	tb := &table{title: "bench httpsd"}
	tb.add("target groups", "%d", groups)
	if memBefore != nil {
		tb.add("server RSS before the first fetch", "%s", *memBefore)
	}
	tb.add("first fetch identity", "%s, %s (header after %s)", mib(first.bodyLen), ms(first.total), ms(first.ttfb))
	tb.add("first fetch gzip", "%s, %s (header after %s)", mib(firstGz.bodyLen), ms(firstGz.total), ms(firstGz.ttfb))
	for _, s := range append(cached[:], changed[:]...) {
		if len(s.total) == 0 {
			continue
		}
		lo, hi := s.total.minmax()
		tb.add(s.name, "median %s (min %s, max %s) of %d, %s; header after median %s",
			ms(s.total.median()), ms(lo), ms(hi), len(s.total), mib(s.size), ms(s.ttfb.median()))
	}
	if err := addServerMemory(tb, c, t.host, deadline, cfg.ServerPID); err != nil {
		return err
	}
	return tb.write(out)
}

// checkGzip makes sure the gzip body decompresses to as many bytes as the
// identity body, so a broken encoder cannot look fast.
func checkGzip(r reply, want int64) error {
	if r.header.Get("Content-Encoding") != "gzip" {
		return fmt.Errorf("server did not gzip the http_sd reply")
	}
	zr, err := gzip.NewReader(bytes.NewReader(r.body))
	if err != nil {
		return fmt.Errorf("gzip http_sd reply: %w", err)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(zr, maxSDBody))
	if err != nil {
		return fmt.Errorf("gzip http_sd reply: %w", err)
	}
	// Registrations between the two fetches would change the size; the
	// benchmark makes none, so any difference is a bug.
	if n != want {
		return fmt.Errorf("gzip http_sd reply is %d bytes uncompressed, identity is %d", n, want)
	}
	return nil
}

// serverMetrics are the process metrics read from the server's /metrics.
var serverMetricNames = []string{
	"process_resident_memory_bytes",
	"go_memstats_heap_inuse_bytes",
	"go_memstats_sys_bytes",
}

// addServerMemory reads the server's own memory metrics and, with its pid,
// its peak RSS from /proc.
func addServerMemory(tb *table, c *conn, host string, deadline time.Time, pid int) error {
	r, err := c.roundTrip(request(http.MethodGet, host, "/metrics", nil, nil), maxReplyBody*8, true, deadline)
	if err != nil {
		return fmt.Errorf("read server metrics: %w", err)
	}
	if r.status != http.StatusOK {
		return fmt.Errorf("read server metrics: %w", &statusError{r.status, truncate(r.body)})
	}
	vals := scrapeValues(r.body, serverMetricNames)
	for _, name := range serverMetricNames {
		if v, ok := vals[name]; ok {
			tb.add("server "+name, "%s", mib(int64(v)))
		}
	}
	if pid > 0 {
		m, err := procMemory(pid)
		if err != nil {
			return err
		}
		tb.add("server RSS after the fetches", "%s", m)
	}
	return nil
}

// scrapeValues picks unlabelled samples out of a text exposition.
func scrapeValues(body []byte, names []string) map[string]float64 {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := make(map[string]float64, len(names))
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !want[name] {
			continue
		}
		val, _, _ = strings.Cut(val, " ") // drop a timestamp
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			out[name] = v
		}
	}
	return out
}
