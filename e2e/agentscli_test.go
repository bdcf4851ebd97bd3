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
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestAgentsCLI drives `baremetal_sd agents list|revoke|maintenance`
// against the real server: with an admin client certificate and with an
// admin token, as a table and as JSON, and refused with a discovery
// certificate.
func TestAgentsCLI(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	enrollTok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")
	var ids []string
	for _, host := range []string{"cli-a.example.com", "cli-b.example.com"} {
		a := enroll(t, s, enrollTok, protocol.RegisterRequest{
			Hostname: host, Address: "127.0.0.1", Port: 9956, Labels: map[string]string{"role": "cli"},
			Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		})
		ids = append(ids, a.ID)
	}
	admin := issueCert(t, s.DataDir, "operator", "admin")
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte(createToken(t, s.DataDir, "--scope=admin", "--ttl=10m")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withCert := []string{"--server.url=" + s.URL, "--tls.ca-file=" + admin.CAFile, "--tls.cert-file=" + admin.CertFile, "--tls.key-file=" + admin.KeyFile}
	withToken := []string{"--server.url=" + s.URL, "--tls.ca-file=" + admin.CAFile, "--token-file=" + tokenFile}
	agents := func(auth []string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), binary, append(append([]string{"agents"}, args...), auth...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output() // stdout alone, so that JSON parses
		return string(out) + stderr.String(), err
	}
	list := func(auth []string) map[string]discovery.AgentView {
		t.Helper()
		out, err := agents(auth, "list", "--output=json")
		if err != nil {
			t.Fatalf("agents list --output=json: %v\n%s", err, out)
		}
		var views []discovery.AgentView
		if err := json.Unmarshal([]byte(out), &views); err != nil {
			t.Fatalf("agents list --output=json is not a JSON list of agents: %v\n%s", err, out)
		}
		byID := make(map[string]discovery.AgentView)
		for _, v := range views {
			byID[v.ID] = v
		}
		return byID
	}

	table, err := agents(withCert, "list")
	if err != nil {
		t.Fatalf("agents list: %v\n%s", err, table)
	}
	for _, want := range []string{"cli-a.example.com", "cli-b.example.com", "healthy", ids[0]} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if v := list(withToken); len(v) != 2 || v[ids[0]].State != discovery.StateHealthy {
		t.Fatalf("list with a token: %+v", v)
	}

	if out, err := agents(withToken, "maintenance", ids[0], "on"); err != nil {
		t.Fatalf("agents maintenance on: %v\n%s", err, out)
	}
	if out, err := agents(withCert, "revoke", ids[1]); err != nil {
		t.Fatalf("agents revoke: %v\n%s", err, out)
	}
	v := list(withCert)
	if v[ids[0]].State != discovery.StateMaintenance || !v[ids[0]].Maintenance {
		t.Errorf("after maintenance on: %+v", v[ids[0]])
	}
	if v[ids[1]].State != discovery.StateRevoked {
		t.Errorf("after revoke: %+v", v[ids[1]])
	}
	if out, err := agents(withToken, "maintenance", ids[0], "off"); err != nil {
		t.Fatalf("agents maintenance off: %v\n%s", err, out)
	}
	if v := list(withToken); v[ids[0]].State != discovery.StateHealthy {
		t.Errorf("after maintenance off: %+v", v[ids[0]])
	}

	// Refusals: an unknown agent, and a certificate that is not an admin's.
	if out, err := agents(withCert, "revoke", "no-such-agent"); err == nil || !strings.Contains(out, "no such agent") {
		t.Errorf("revoking an unknown agent: %v\n%s", err, out)
	}
	prom := issueCert(t, s.DataDir, "prometheus", "discovery")
	if out, err := agents([]string{"--server.url=" + s.URL, "--tls.ca-file=" + prom.CAFile, "--tls.cert-file=" + prom.CertFile, "--tls.key-file=" + prom.KeyFile}, "list"); err == nil {
		t.Errorf("agents list with a discovery certificate succeeded:\n%s", out)
	}
}
