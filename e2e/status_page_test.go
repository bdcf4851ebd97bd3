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
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// chromiumBinary is where Debian's chromium package installs the browser.
const chromiumBinary = "/usr/bin/chromium"

// TestStatusPage starts the server with basic auth in its web config,
// enrolls a small fleet through the API (which basic auth must not block),
// revokes one agent, puts one in maintenance and gives one a hostile label
// value. It checks that basic auth guards the status page only, then opens
// the page in headless Chromium: the rendered DOM must show the fleet with
// the hostile text as text, and a screenshot is kept as a test artifact.
func TestStatusPage(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(chromiumBinary); err != nil {
		t.Fatalf("%s is missing (%v): run scripts/install-test-deps.sh (make test does)", chromiumBinary, err)
	}
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("status-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	// Relative paths in a web config are relative to the file: data/ is
	// the server's data directory beside it.
	webConfig := filepath.Join(dir, "web-config.yml")
	if err := os.WriteFile(webConfig, []byte(`tls_server_config:
  cert_file: data/server.crt
  key_file: data/server.key
  client_auth_type: VerifyClientCertIfGiven
  client_ca_file: data/ca.crt
basic_auth_users:
  operator: `+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A first start without the web config creates the CA and the serving
	// certificate that the web config names, as in the README.
	first := startServer(t, "--data.dir="+filepath.Join(dir, "data"))
	// Without basic auth in a web config, an anonymous visitor sees the
	// counts but not the agents; a discovery certificate sees them.
	enroll(t, first, createToken(t, first.DataDir, "--scope=enroll", "--ttl=10m"), protocol.RegisterRequest{
		Hostname: "db0.status.test", Address: "127.0.0.1", Port: 9956,
		Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
	})
	anonymous := mustRequest(t, first.client(t), http.MethodGet, first.URL+"/", "", nil, http.StatusOK).Body
	if strings.Contains(string(anonymous), "db0.status.test") || !strings.Contains(string(anonymous), "needs credentials") {
		t.Errorf("anonymous status page shows the agents or no hint:\n%.800s", anonymous)
	}
	reader := issueCert(t, first.DataDir, "status-reader", "discovery")
	if page := mustRequest(t, first.client(t, reader.KeyPair), http.MethodGet, first.URL+"/", "", nil, http.StatusOK).Body; !strings.Contains(string(page), "db0.status.test") {
		t.Errorf("status page for a discovery certificate lacks the agent:\n%.800s", page)
	}
	first.stop(t)
	s := startServer(t, "--data.dir="+filepath.Join(dir, "data"), "--web.config.file="+webConfig)
	enrollTok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")
	adminTok := createToken(t, s.DataDir, "--scope=admin", "--ttl=10m")

	hostile := `<script>document.title="owned"</script><img src=x onerror="document.title='owned'">`
	agents := map[string]*testAgent{}
	for _, a := range []struct {
		host   string
		labels map[string]string
	}{
		{"db1.status.test", map[string]string{"role": "db"}},
		{"web1.status.test", map[string]string{"role": "web"}},
		{"web2.status.test", map[string]string{"role": "web", "note": hostile}},
	} {
		agents[a.host] = enroll(t, s, enrollTok, protocol.RegisterRequest{
			Hostname: a.host, Address: "127.0.0.1", Port: 9956, Labels: a.labels,
			Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		})
	}
	admin := s.client(t)
	mustRequest(t, admin, http.MethodDelete, s.URL+protocol.PathAgents+"/"+agents["web1.status.test"].ID, adminTok, nil, http.StatusOK)
	mustRequest(t, admin, http.MethodPost, s.URL+protocol.PathAgents+"/"+agents["web2.status.test"].ID+"/maintenance",
		adminTok, protocol.MaintenanceRequest{Maintenance: true}, http.StatusOK)

	// Basic auth guards the page, and only the page.
	get := func(path, user, pass string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := admin.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, _ := get("/", "", ""); code != http.StatusUnauthorized {
		t.Errorf("status page without credentials: %d, want 401", code)
	}
	if code, _ := get("/", "operator", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("status page with a wrong password: %d, want 401", code)
	}
	code, page := get("/", "operator", "status-pw")
	if code != http.StatusOK || !strings.Contains(page, "db1.status.test") {
		t.Fatalf("status page with credentials: %d\n%.500s", code, page)
	}
	for _, path := range []string{"/metrics", protocol.PathCA, "/-/healthy"} {
		if code, _ := get(path, "", ""); code != http.StatusOK {
			t.Errorf("%s without basic auth: %d, want 200", path, code)
		}
	}

	// The browser's view.
	artifacts := os.Getenv("BAREMETAL_SD_TEST_ARTIFACTS")
	if artifacts == "" {
		root, err := repoRoot()
		if err != nil {
			t.Fatal(err)
		}
		artifacts = filepath.Join(root, "test-artifacts")
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	pageURL := "https://operator:status-pw@" + s.Addr + "/"
	dom := chromium(t, "--dump-dom", pageURL)
	for _, want := range []string{"db1.status.test", "web1.status.test", "web2.status.test", "revoked", "maintenance", "healthy", "role=db"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q", want)
		}
	}
	if !strings.Contains(dom, "note=&lt;script&gt;") || strings.Contains(dom, "<script>") || strings.Contains(dom, "<img") {
		t.Errorf("hostile label not rendered as text:\n%s", dom)
	}
	if strings.Contains(dom, "<title>owned") {
		t.Error("a script from a label ran in the page")
	}
	// The page under its own Content-Security-Policy: nothing blocked (the
	// browser logs every violation), filters and auto-refresh through the
	// query, and no http_sd link for a reader with a password, who cannot
	// fetch it.
	filtered, console := chromiumWithConsole(t, "--dump-dom", pageURL+"?host=web&refresh=30")
	if strings.Contains(console, "Content Security Policy") {
		t.Errorf("the browser blocked part of the page:\n%s", console)
	}
	for _, want := range []string{"web1.status.test", "web2.status.test", `http-equiv="refresh" content="30"`} {
		if !strings.Contains(filtered, want) {
			t.Errorf("page filtered by host=web lacks %q", want)
		}
	}
	if strings.Contains(filtered, "db1.status.test") || strings.Contains(filtered, `href="/api/v1/discovery"`) {
		t.Errorf("page filtered by host=web shows db1 or an http_sd link a password cannot open:\n%s", filtered)
	}
	shot := filepath.Join(artifacts, "status-page.png")
	chromium(t, "--screenshot="+shot, pageURL)
	fi, err := os.Stat(shot)
	if err != nil || fi.Size() < 1000 {
		t.Fatalf("no screenshot at %s (%v)", shot, err)
	}
	t.Logf("status page screenshot: %s", shot)
}

// chromium runs headless Chromium with the flags this machine needs (no
// sandbox as root, no background network traffic) on a fresh profile,
// accepting the server's own CA, and returns what it printed.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := chromiumWithConsole(t, args...)
	return out
}

// chromiumWithConsole is chromium that also returns the browser's log,
// which holds the page's console messages (Content-Security-Policy
// violations among them).
func chromiumWithConsole(t *testing.T, args ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	full := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--ignore-certificate-errors", "--hide-scrollbars",
		"--window-size=1280,900", "--user-data-dir=" + t.TempDir(),
		"--enable-logging=stderr", "--v=0",
	}, args...)
	cmd := exec.CommandContext(ctx, chromiumBinary, full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, truncate([]byte(stderr.String())))
	}
	return string(out), stderr.String()
}
