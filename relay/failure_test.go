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

package relay

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/model"
)

// manySamples is a text exposition of about n bytes.
func manySamples(n int) []byte {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "# TYPE fam_%d gauge\n", i)
		for j := range 50 {
			fmt.Fprintf(&b, "fam_%d{instance=\"host-%d\",path=\"/api/v1/items/%d\"} %d\n", i, j%7, j, j)
		}
	}
	return []byte(b.String())
}

// endless writes body over and over until the client goes away.
func endless(ct, encoding string, chunk []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ct)
		var out io.Writer = w
		if encoding == "gzip" {
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			defer zw.Close()
			out = zw
		}
		for r.Context().Err() == nil {
			if _, err := out.Write(chunk); err != nil {
				return
			}
		}
	}
}

// goroutinesSettle waits until no more goroutines run than before.
func goroutinesSettle(t *testing.T, before int, clients ...*http.Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, c := range clients {
			c.CloseIdleConnections()
		}
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRelay_FailuresAfterTheFirstByte: once the response has begun, its
// status cannot change, so a failure aborts it (net/http closes the
// connection without the final chunk) and the scraper sees a failed scrape
// instead of a truncated exposition. Before the first byte the same
// failures are a 502 or 504 with the reason. Either way the relay stays
// healthy and no goroutine is left behind.
func TestRelay_FailuresAfterTheFirstByte(t *testing.T) {
	big := manySamples(2 << 20)
	sample := []byte("endless_metric{a=\"b\"} 1\n")
	comment := []byte("# a comment that goes on\n")
	tests := []struct {
		name    string
		cfg     string // extra relay configuration
		handler http.HandlerFunc
		accept  string
		gzip    bool   // the scraper asks for gzip
		status  int    // 0: aborted after the first byte
		reason  string // upstream_errors_total reason
	}{
		{"max_body_bytes before the first byte", "max_body_bytes: 1000\n", bodyHandler("text/plain", big), acceptText, false, 502, "body_too_large"},
		{"max_body_bytes after the first byte", "max_body_bytes: 500000\n", bodyHandler("text/plain", big), acceptText, false, 0, "body_too_large"},
		{"max_body_bytes after the first byte, gzip", "max_body_bytes: 500000\n", bodyHandler("text/plain", big), acceptText, true, 0, "body_too_large"},
		{"max_body_bytes after the first byte, protobuf", "max_body_bytes: 500000\n", bodyHandler("text/plain", big), acceptProto, false, 0, "body_too_large"},
		{"gzip bomb before the first byte", "max_body_bytes: 10000\n", endless("text/plain", "gzip", comment), acceptText, false, 502, "body_too_large"},
		{"gzip bomb after the first byte", "max_body_bytes: 1000000\n", endless("text/plain", "gzip", sample), acceptText, false, 0, "body_too_large"},
		{"gzip bomb after the first byte, openmetrics", "max_body_bytes: 3000000\n", endless("text/plain", "gzip", sample), acceptOM, true, 0, "body_too_large"},
		{"never ending body before the first byte", "max_body_bytes: 100000000000\n", endless("text/plain", "", comment), acceptText, false, 504, "timeout"},
		{"never ending body after the first byte", "max_body_bytes: 100000000000\n", endless("text/plain", "", sample), acceptText, false, 0, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := httptest.NewServer(tt.handler)
			defer bad.Close()
			good := upstreamServer(t, "text/plain", []byte("ok 1\n"))
			timeout := "30s"
			if tt.reason == "timeout" {
				timeout = "1s"
			}
			r, m := newRelay(t, tt.cfg+"exporters:\n  - name: bad\n    url: "+bad.URL+"\n    timeout: "+timeout+"\n  - name: good\n    url: "+good.URL+"\n")
			srv := httptest.NewServer(r)
			defer srv.Close()
			client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
			get := func(path string) (int, []byte, error) {
				req, _ := http.NewRequest("GET", srv.URL+path, nil)
				req.Header.Set("Accept", tt.accept)
				if tt.gzip {
					req.Header.Set("Accept-Encoding", "gzip")
				}
				resp, err := client.Do(req)
				if err != nil {
					return 0, nil, err
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				return resp.StatusCode, body, err
			}
			if code, _, err := get("/exporters/good/metrics"); err != nil || code != 200 {
				t.Fatalf("warm-up scrape: %d %v", code, err)
			}
			client.CloseIdleConnections()
			before := runtime.NumGoroutine()

			code, body, err := get("/exporters/bad/metrics")
			switch {
			case tt.status == 0 && err == nil:
				t.Fatalf("scrape completed with %d and %d bytes, want it aborted", code, len(body))
			case tt.status == 0 && code != 200:
				t.Fatalf("status %d, want a started response that is aborted", code)
			case tt.status != 0 && (err != nil || code != tt.status):
				t.Fatalf("status %d (%v), want %d", code, err, tt.status)
			case tt.status != 0 && (strings.Count(strings.TrimSpace(string(body)), "\n") > 0 || len(body) == 0):
				t.Errorf("reason is not one line: %q", body)
			}
			if v := testutil.ToFloat64(m.Up.WithLabelValues("bad")); v != 0 {
				t.Errorf("relay_up{bad} = %v", v)
			}
			if v := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("bad", tt.reason)); v != 1 {
				t.Errorf("upstream_errors_total{reason=%q} = %v", tt.reason, v)
			}
			if code, body, err := get("/exporters/good/metrics"); err != nil || code != 200 || !strings.Contains(string(body), "ok") {
				t.Fatalf("relay unhealthy afterwards: %d %q %v", code, body, err)
			}
			bad.CloseClientConnections()
			goroutinesSettle(t, before, client)
		})
	}
}

func bodyHandler(ct string, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", ct)
		_, _ = w.Write(body)
	}
}

// TestRelay_SeriesWithoutNameFails: a series whose quoted name is empty,
// which Prometheus' text parser takes and Prometheus fails the scrape for,
// fails the relay in every output format, also after blanks.
func TestRelay_SeriesWithoutNameFails(t *testing.T) {
	for _, body := range []string{"{\"\"} 0\n", " {\"\"}0", "\t{\"\"} 1\n", "{\"\",a=\"b\"} 1\n", "a 1\n  {\"\",a=\"b\"} 1\n"} {
		for _, out := range []Format{FormatText, FormatOpenMetrics, FormatProtobuf} {
			for _, label := range []string{"", "exporter"} {
				for _, esc := range []model.EscapingScheme{model.NoEscaping, model.UnderscoreEscaping} {
					t.Run(fmt.Sprintf("%q/%v/%q/%v", body, out, label, esc), func(t *testing.T) {
						p := newPipeline("e", label, nil, defaultLimits)
						err := p.relay(strings.NewReader(body), FormatText, "text/plain; version=0.0.4", out, esc, io.Discard)
						if !errors.Is(err, errParse) {
							t.Fatalf("got %v, want %v", err, errParse)
						}
					})
				}
			}
		}
	}
}
