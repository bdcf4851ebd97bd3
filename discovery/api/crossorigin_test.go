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
	"bytes"
	"crypto/tls"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestAPI_RefusesCrossSiteRequests is the attack of a web page that makes
// the browser of an operator (or of a host) holding a client certificate
// send a state-changing request: a form or no-cors fetch with a text/plain
// body, or any request from another origin. Every state-changing endpoint
// refuses it before looking at the credentials, and nothing changes.
func TestAPI_RefusesCrossSiteRequests(t *testing.T) {
	h := newAPIHarness(t)
	resp, agentCert := h.enroll(ca.TokenSpec{}, nil)
	admin := h.clientCert(ca.RoleAdmin)
	maintenance := protocol.PathAgents + "/" + resp.AgentID + "/maintenance"
	endpoints := []struct {
		method, path string
		cert         *tls.Certificate
		body         string
	}{
		{"POST", maintenance, &admin, `{"maintenance":true}`},
		{"DELETE", protocol.PathAgents + "/" + resp.AgentID, &admin, ""},
		{"POST", protocol.PathRegister, &agentCert, string(registerBody(t, nil))},
		{"POST", protocol.PathHeartbeat, &agentCert, `{"status":"ok"}`},
		{"POST", protocol.PathRenew, &agentCert, `{"csr":""}`},
		{"DELETE", protocol.PathSelf, &agentCert, ""},
	}
	self := h.srv.URL // https://127.0.0.1:port, the request's own origin
	attacks := []struct {
		name        string
		contentType string
		header      map[string]string
		want        int
	}{
		{"text/plain body", "text/plain", nil, http.StatusUnsupportedMediaType},
		{"form body", "application/x-www-form-urlencoded", nil, http.StatusUnsupportedMediaType},
		{"foreign Origin", "application/json", map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
		{"foreign Origin, text/plain", "text/plain", map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
		{"null Origin", "application/json", map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"Sec-Fetch-Site cross-site", "application/json", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"Sec-Fetch-Site same-site", "application/json", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": self}, http.StatusForbidden},
	}
	before := testutil.ToFloat64(h.metrics.RequestRejections.WithLabelValues("cross_origin")) +
		testutil.ToFloat64(h.metrics.RequestRejections.WithLabelValues("content_type"))
	refused := 0
	for _, ep := range endpoints {
		for _, at := range attacks {
			t.Run(ep.method+" "+ep.path+"/"+at.name, func(t *testing.T) {
				// The DELETEs have no body: a non-JSON Content-Type is
				// refused all the same.
				status, body := rawRequest(t, h.client(ep.cert), ep.method, h.srv.URL+ep.path, at.contentType, at.header, ep.body)
				if status != at.want {
					t.Fatalf("status %d (%s), want %d", status, body, at.want)
				}
				refused++
			})
		}
	}
	if v, ok := h.reg.Get(resp.AgentID); !ok || v.Maintenance || v.Revoked() || v.Deregistered {
		t.Fatalf("a refused request changed the agent: found %v, %+v", ok, v.Agent)
	}
	after := testutil.ToFloat64(h.metrics.RequestRejections.WithLabelValues("cross_origin")) +
		testutil.ToFloat64(h.metrics.RequestRejections.WithLabelValues("content_type"))
	if int(after-before) != refused {
		t.Errorf("baremetal_sd_api_request_rejections_total rose by %v, want %d", after-before, refused)
	}

	// The same request from the server's own origin, or from a client that
	// is not a browser, is served.
	for _, tt := range []struct {
		name   string
		header map[string]string
	}{
		{"no browser headers", nil},
		{"same origin", map[string]string{"Origin": self, "Sec-Fetch-Site": "same-origin"}},
		{"typed URL", map[string]string{"Sec-Fetch-Site": "none"}},
	} {
		t.Run("allowed/"+tt.name, func(t *testing.T) {
			status, body := rawRequest(t, h.client(&admin), "POST", h.srv.URL+maintenance, "application/json; charset=utf-8", tt.header, `{"maintenance":true}`)
			if status != http.StatusOK {
				t.Fatalf("status %d (%s), want 200", status, body)
			}
		})
	}
}

func rawRequest(t *testing.T, c *http.Client, method, url, contentType string, header map[string]string, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader = http.NoBody
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// FuzzStateChanging feeds hostile browser headers to the guard of the
// state-changing endpoints: it never panics, a refused request never
// reaches the handler, and a body declared as anything but JSON, or sent
// cross-site, is always refused.
func FuzzStateChanging(f *testing.F) {
	f.Add("application/json", "", "", "{}")
	f.Add("text/plain", "https://evil.example", "cross-site", "{}")
	f.Add("application/json; charset=utf-8", "https://127.0.0.1:9955", "same-origin", "")
	f.Add("application/JSON ;", "null", "none", "x")
	f.Add("multipart/form-data; boundary=\"", "http://[::1", "same-site", "")
	guard := newStateChanging(New(Config{}))
	f.Fuzz(func(t *testing.T, contentType, origin, fetchSite, body string) {
		r := httptest.NewRequest(http.MethodPost, "https://127.0.0.1:9955"+protocol.PathHeartbeat, strings.NewReader(body))
		for k, v := range map[string]string{"Content-Type": contentType, "Origin": origin, "Sec-Fetch-Site": fetchSite} {
			if v != "" {
				r.Header.Set(k, v)
			}
		}
		served := false
		rec := httptest.NewRecorder()
		guard.wrap(func(http.ResponseWriter, *http.Request) { served = true })(rec, r)
		if served != (rec.Code == http.StatusOK) {
			t.Fatalf("served %v with status %d", served, rec.Code)
		}
		mt, _, err := mime.ParseMediaType(contentType)
		notJSON := (contentType != "" || body != "") && (err != nil || mt != "application/json")
		crossSite := fetchSite == "cross-site" || fetchSite == "same-site"
		if served && (notJSON || crossSite) {
			t.Fatalf("served Content-Type %q, Sec-Fetch-Site %q, body %q", contentType, fetchSite, body)
		}
	})
}
