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
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery"
)

// TestAgent_DeregisterKeepsEnrollmentAndRevocation is the attack of a host
// that deregisters to shed what its token and its operator fixed, with the
// real server, agent and `agents` command: the agent deregisters on SIGTERM,
// then starts again with only its still-valid certificate. It must come back
// with the label its token pinned and in maintenance; and once an operator
// revokes it while it is deregistered, its certificate must not register
// again.
func TestAgent_DeregisterKeepsEnrollmentAndRevocation(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t, "--agent.ttl=8s")
	tok := createToken(t, h.s.DataDir, "--scope=enroll", "--ttl=10m", "--label=role=db")
	a := startAgent(t, h.s, agentOptions{Token: tok})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)
	// Only the certificate brings it back from now on.
	if err := os.Remove(a.TokenFile); err != nil {
		t.Fatal(err)
	}

	admin := issueCert(t, h.s.DataDir, "operator", "admin")
	agentsCLI := func(args ...string) string {
		t.Helper()
		return runCLI(t, append(append([]string{"agents"}, args...),
			"--server.url="+h.s.URL, "--tls.ca-file="+admin.CAFile, "--tls.cert-file="+admin.CertFile, "--tls.key-file="+admin.KeyFile)...)
	}
	view := func() discovery.AgentView {
		t.Helper()
		var views []discovery.AgentView
		if out := agentsCLI("list", "--output=json"); json.Unmarshal([]byte(out), &views) != nil {
			t.Fatalf("agents list: %s", out)
		}
		for _, v := range views {
			if v.ID == id {
				return v
			}
		}
		t.Fatalf("agents list lacks agent %s", id)
		return discovery.AgentView{}
	}
	agentsCLI("maintenance", id, "on")

	// Deregistered: out of http_sd, listed to the operator as such.
	a.stop(t)
	if got := sdTargetsOf(h.sd(t), id); len(got) != 0 {
		t.Fatalf("http_sd lists the deregistered agent: %+v", got)
	}
	if v := view(); v.State != discovery.StateDeregistered {
		t.Fatalf("agents list shows the deregistered agent as %q, want %q", v.State, discovery.StateDeregistered)
	}
	if out := agentsCLI("list"); !strings.Contains(out, string(discovery.StateDeregistered)) {
		t.Errorf("agents list table does not show the state:\n%s", out)
	}

	// Back with the certificate alone: pins and maintenance are still there.
	a.start(t)
	a.waitState(t, h.scraper, "registered")
	v := view()
	if v.State != discovery.StateMaintenance || v.Labels.Get("role") != "db" || v.PinnedLabels.Get("role") != "db" {
		t.Fatalf("after registering again: state %q, labels %v, pinned %v; want maintenance and role=db pinned", v.State, v.Labels, v.PinnedLabels)
	}

	// Deregistered again, then revoked: the certificate stays refused.
	a.stop(t)
	agentsCLI("revoke", id)
	a.start(t)
	a.waitState(t, h.scraper, "revoked")
	if v := view(); v.State != discovery.StateRevoked {
		t.Fatalf("after the revocation: state %q, want %q", v.State, discovery.StateRevoked)
	}
	if got := sdTargetsOf(h.sd(t), id); len(got) != 0 {
		t.Errorf("http_sd lists the revoked agent: %+v", got)
	}
	a.stop(t)
}
