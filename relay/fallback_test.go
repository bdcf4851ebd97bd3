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
	"net/http"
	"strings"
	"testing"
)

func TestRelay_FallbackScrapeProtocol(t *testing.T) {
	body := []byte("# TYPE script_runs counter\nscript_runs_total 3\n")
	for _, tc := range []struct {
		name, contentType, fallback string
		wantStatus                  int
	}{
		{"octet-stream without fallback", "application/octet-stream", "", http.StatusBadGateway},
		{"octet-stream with text fallback", "application/octet-stream", "PrometheusText0.0.4", http.StatusOK},
		{"missing with text fallback", "", "PrometheusText1.0.0", http.StatusOK},
		{"known type wins over the fallback", "text/plain; version=0.0.4", "PrometheusProto", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := upstreamServer(t, tc.contentType, body)
			cfg := "exporters:\n  - name: script\n    url: " + up.URL + "\n"
			if tc.fallback != "" {
				cfg += "    fallback_scrape_protocol: " + tc.fallback + "\n"
			}
			r, _ := newRelay(t, cfg)
			rec := scrape(t, r, ExporterPath("script"), acceptText)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d (%s), want %d", rec.Code, rec.Body.String(), tc.wantStatus)
			}
			if tc.wantStatus == http.StatusOK && !strings.Contains(rec.Body.String(), "script_runs_total 3") {
				t.Errorf("body:\n%s", rec.Body.String())
			}
		})
	}
}

func TestParseConfig_FallbackScrapeProtocolValidated(t *testing.T) {
	_, err := ParseConfig([]byte("exporters:\n  - name: s\n    url: http://127.0.0.1:1/\n    fallback_scrape_protocol: text\n"))
	if err == nil || !strings.Contains(err.Error(), "fallback_scrape_protocol") {
		t.Errorf("ParseConfig accepted fallback_scrape_protocol: text (err %v)", err)
	}
}
