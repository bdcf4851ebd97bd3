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
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// relayConfigPath is the agent's --relay.config.file.
func (a *agentProc) relayConfigPath(t *testing.T) string {
	t.Helper()
	for _, arg := range a.args {
		if p, ok := strings.CutPrefix(arg, "--relay.config.file="); ok {
			return p
		}
	}
	t.Fatal("the agent has no --relay.config.file")
	return ""
}

// rewriteRelayConfig replaces the agent's relay config file.
func (a *agentProc) rewriteRelayConfig(t *testing.T, content string) {
	t.Helper()
	if err := os.WriteFile(a.relayConfigPath(t), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// exportersInSD returns the exporter names http_sd lists for agent id, and
// the value of label key on the agent's own group.
func (h *agentHarness) exportersInSD(t *testing.T, id, key string) ([]string, string) {
	t.Helper()
	var names []string
	label := ""
	for _, g := range sdTargetsOf(h.sd(t), id) {
		names = append(names, g.Labels[protocol.MetaExporter])
		if g.Labels[protocol.MetaExporter] == protocol.AgentExporterName {
			label = g.Labels[protocol.MetaLabelPrefix+key]
		}
	}
	slices.Sort(names)
	return names, label
}

// waitMetric waits until the agent's series has value want.
func (a *agentProc) waitMetric(t *testing.T, c *http.Client, series string, want float64) {
	t.Helper()
	waitFor(t, startTimeout, func() error {
		if a.proc.exited() {
			t.Fatalf("agent exited: %v", a.proc.err)
		}
		v, err := a.metric(t.Context(), c, series)
		if err != nil {
			return err
		}
		if v != want {
			return fmt.Errorf("%s = %v, want %v", series, v, want)
		}
		return nil
	})
}

const reloadOK = "baremetal_sd_agent_config_last_reload_successful"

func TestAgent_SIGHUPReloadsRelayConfig(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	node := startNodeExporter(t)
	one := fmt.Sprintf("exporters:\n  - name: node\n    url: http://%s/metrics\n", node)
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t), RelayConfig: one})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)
	a.waitMetric(t, h.scraper, reloadOK, 1)

	// A second exporter and a label, from the file: both reach http_sd
	// without a restart, and the new exporter is relayed at once.
	two := one + fmt.Sprintf("  - name: node2\n    url: http://%s/metrics\nlabels:\n  rack: r2\n", node)
	a.rewriteRelayConfig(t, two)
	if err := a.proc.signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, startTimeout, func() error {
		if a.proc.exited() {
			t.Fatalf("SIGHUP killed the agent: %v", a.proc.err)
		}
		names, rack := h.exportersInSD(t, id, "rack")
		if want := []string{"agent", "node", "node2"}; !slices.Equal(names, want) || rack != "r2" {
			return fmt.Errorf("http_sd lists exporters %v and rack %q, want %v and r2", names, rack, want)
		}
		return nil
	})
	resp, err := doRequest(t.Context(), h.scraper, http.MethodGet, a.URL+"/exporters/node2/metrics", "", nil)
	if err != nil || resp.Status != http.StatusOK || !strings.Contains(string(resp.Body), "node_exporter_build_info") {
		t.Fatalf("relay of the added exporter: %v %+v", err, resp)
	}

	// A broken file keeps everything as it was, and says so.
	a.rewriteRelayConfig(t, two+"exporter_lable: x\n")
	if err := a.proc.signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitMetric(t, h.scraper, reloadOK, 0)
	if !strings.Contains(a.log.String(), "Failed to reload the configuration, keeping the previous one") {
		t.Error("the agent did not log the failed reload")
	}
	if names, rack := h.exportersInSD(t, id, "rack"); !slices.Equal(names, []string{"agent", "node", "node2"}) || rack != "r2" {
		t.Errorf("after a failed reload http_sd lists %v and rack %q", names, rack)
	}
	resp, err = doRequest(t.Context(), h.scraper, http.MethodGet, a.URL+"/exporters/node2/metrics", "", nil)
	if err != nil || resp.Status != http.StatusOK {
		t.Errorf("after a failed reload the relay does not serve node2: %v %+v", err, resp)
	}

	// Removing an exporter removes its target.
	a.rewriteRelayConfig(t, one)
	if err := a.proc.signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitMetric(t, h.scraper, reloadOK, 1)
	waitFor(t, startTimeout, func() error {
		names, rack := h.exportersInSD(t, id, "rack")
		if want := []string{"agent", "node"}; !slices.Equal(names, want) || rack != "" {
			return fmt.Errorf("http_sd lists exporters %v and rack %q, want %v and none", names, rack, want)
		}
		return nil
	})
	resp, err = doRequest(t.Context(), h.scraper, http.MethodGet, a.URL+"/exporters/node2/metrics", "", nil)
	if err != nil || resp.Status != http.StatusNotFound {
		t.Errorf("a removed exporter is still relayed: %v %+v", err, resp)
	}
	a.stop(t)
}

func TestAgent_ReloadEndpoint(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	node := startNodeExporter(t)
	one := fmt.Sprintf("exporters:\n  - name: node\n    url: http://%s/metrics\n", node)
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t), RelayConfig: one, Args: []string{"--web.enable-lifecycle"}})
	a.waitState(t, h.scraper, "registered")
	admin := h.s.agentClient(t, issueCert(t, h.s.DataDir, "operator", "admin").KeyPair)

	post := func(c *http.Client, header http.Header) *response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, a.URL+"/-/reload", nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("POST /-/reload: %v", err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("POST /-/reload: %v", err)
		}
		return &response{Status: resp.StatusCode, Body: body}
	}

	a.rewriteRelayConfig(t, one+"exporter_lable: x\n")
	for _, tc := range []struct {
		name   string
		client *http.Client
		header http.Header
		want   int
	}{
		// Prometheus' scrape certificate reads; it must not reconfigure.
		{"scraper certificate", h.scraper, nil, http.StatusForbidden},
		// A page on another site, in a browser that holds the admin
		// certificate.
		{"cross-site", admin, http.Header{"Sec-Fetch-Site": {"cross-site"}}, http.StatusForbidden},
		// The file is broken: 500 with the reason, the old config stays.
		{"broken file", admin, nil, http.StatusInternalServerError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(tc.client, tc.header)
			if resp.Status != tc.want {
				t.Errorf("status %d (%s), want %d", resp.Status, resp.Body, tc.want)
			}
		})
	}
	a.waitMetric(t, h.scraper, reloadOK, 0)

	a.rewriteRelayConfig(t, one+"labels:\n  rack: r3\n")
	if resp := post(admin, nil); resp.Status != http.StatusOK {
		t.Fatalf("reload with a good file: status %d (%s)", resp.Status, resp.Body)
	}
	a.waitMetric(t, h.scraper, reloadOK, 1)
	id := a.id(t)
	waitFor(t, startTimeout, func() error {
		if _, rack := h.exportersInSD(t, id, "rack"); rack != "r3" {
			return fmt.Errorf("http_sd has rack %q, want r3", rack)
		}
		return nil
	})
	if resp, err := doRequest(t.Context(), admin, http.MethodGet, a.URL+"/-/reload", "", nil); err != nil || resp.Status != http.StatusMethodNotAllowed {
		t.Errorf("GET /-/reload: %v %+v, want 405", err, resp)
	}
}

func TestAgent_ReloadEndpointOffByDefault(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t)})
	a.waitState(t, h.scraper, "registered")
	admin := h.s.agentClient(t, issueCert(t, h.s.DataDir, "operator", "admin").KeyPair)
	resp, err := doRequest(t.Context(), admin, http.MethodPost, a.URL+"/-/reload", "", nil)
	if err != nil || resp.Status == http.StatusOK {
		t.Errorf("POST /-/reload without --web.enable-lifecycle: %v %+v, want a refusal", err, resp)
	}
}

// serverMetric reads one series of the server's /metrics.
func (s *testServer) metric(t *testing.T, series string) (float64, error) {
	t.Helper()
	resp, err := doRequest(t.Context(), s.client(t), http.MethodGet, s.URL+"/metrics", "", nil)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(resp.Body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("server /metrics has no series %s", series)
}

func TestServer_SIGHUPChecksWebConfig(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	const series = "baremetal_sd_server_config_last_reload_successful"
	wait := func(want float64) {
		t.Helper()
		waitFor(t, startTimeout, func() error {
			if s.proc.exited() {
				t.Fatalf("SIGHUP killed the server: %v", s.proc.err)
			}
			v, err := s.metric(t, series)
			if err != nil {
				return err
			}
			if v != want {
				return fmt.Errorf("%s = %v, want %v", series, v, want)
			}
			return nil
		})
	}
	for _, tc := range []struct {
		name   string
		append string
		want   float64
	}{
		{"unchanged", "", 1},
		{"broken", "tls_server_config:\n  unknown_key: x\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.append != "" {
				f, err := os.OpenFile(filepath.Join(s.DataDir, "web-config.yml"), os.O_APPEND|os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				_, err = f.WriteString(tc.append)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			// The gauge starts at 1: a good reload shows in the log.
			const reloaded = "Reloaded the configuration"
			before := strings.Count(s.log.String(), reloaded)
			if err := s.proc.signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			wait(tc.want)
			if tc.want == 1 {
				waitFor(t, startTimeout, func() error {
					if strings.Count(s.log.String(), reloaded) == before {
						return fmt.Errorf("no %q logged after SIGHUP", reloaded)
					}
					return nil
				})
			}
		})
	}
	// The last good web config stays in force.
	if _, err := s.metric(t, series); err != nil {
		t.Errorf("the server stopped serving after a broken web config: %v", err)
	}
	if !strings.Contains(s.log.String(), "Failed to reload the configuration, keeping the previous one") {
		t.Error("the server did not log the failed reload")
	}
}

// TestStartup_PortTakenFailsFast: a server or agent whose port is taken
// exits at once, having created nothing and enrolled nowhere.
func TestStartup_PortTakenFailsFast(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = taken.Close() })

	t.Run("server", func(t *testing.T) {
		dataDir := filepath.Join(t.TempDir(), "data")
		out, err := exec.CommandContext(t.Context(), binary, "server", "--data.dir="+dataDir, "--web.listen-address="+taken.Addr().String()).CombinedOutput()
		if err == nil {
			t.Fatalf("server started on a taken port:\n%s", out)
		}
		if !strings.Contains(string(out), "address already in use") {
			t.Errorf("the error does not say the port is taken:\n%s", out)
		}
		if _, err := os.Stat(filepath.Join(dataDir, "ca.crt")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the server created a CA before failing to bind: %v", err)
		}
	})
	t.Run("agent", func(t *testing.T) {
		before := len(h.sd(t))
		dir := t.TempDir()
		tokenFile := filepath.Join(dir, "token")
		if err := os.WriteFile(tokenFile, []byte(h.enrollToken(t)), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(t.Context(), binary, "agent",
			"--discovery.url="+h.s.URL, "--discovery.ca-file="+filepath.Join(h.s.DataDir, "ca.crt"),
			"--discovery.token-file="+tokenFile, "--agent.state-dir="+filepath.Join(dir, "state"),
			"--web.listen-address="+taken.Addr().String(), "--agent.address=127.0.0.1").CombinedOutput()
		if err == nil {
			t.Fatalf("agent ran on a taken port:\n%s", out)
		}
		if !strings.Contains(string(out), "address already in use") {
			t.Errorf("the error does not say the port is taken:\n%s", out)
		}
		if after := len(h.sd(t)); after != before {
			t.Errorf("http_sd went from %d to %d groups: the agent enrolled before failing to bind", before, after)
		}
	})
}

// TestStartup_AgentSaysWhatToFix: an agent that cannot enroll says why, in
// words an operator can act on.
func TestStartup_AgentSaysWhatToFix(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	base := func(dir string) []string {
		return []string{"agent", "--discovery.url=" + h.s.URL, "--agent.state-dir=" + filepath.Join(dir, "state"),
			"--web.listen-address=" + fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--agent.address=127.0.0.1"}
	}

	t.Run("no token file and no certificate", func(t *testing.T) {
		args := append(base(t.TempDir()), "--discovery.ca-file="+filepath.Join(h.s.DataDir, "ca.crt"))
		out, err := exec.CommandContext(t.Context(), binary, args...).CombinedOutput()
		if err == nil {
			t.Fatalf("the agent ran without a way to enroll:\n%s", out)
		}
		if !strings.Contains(string(out), "no --discovery.token-file") || !strings.Contains(string(out), "token create") {
			t.Errorf("the error does not say what to do:\n%s", out)
		}
	})

	t.Run("CA file of the wrong CA", func(t *testing.T) {
		dir := t.TempDir()
		tokenFile := filepath.Join(dir, "token")
		if err := os.WriteFile(tokenFile, []byte(h.enrollToken(t)), 0o600); err != nil {
			t.Fatal(err)
		}
		// agent-ca.crt signs agents, not the server: a likely mix-up.
		wrongCA := filepath.Join(h.s.DataDir, "agent-ca.crt")
		log := &logBuffer{}
		dumpOnFailure(t, "baremetal_sd agent (wrong CA)", log)
		p := startProcess(t, "baremetal_sd agent", log, binary, append(base(dir), "--discovery.token-file="+tokenFile, "--discovery.ca-file="+wrongCA)...)
		t.Cleanup(func() { _ = p.kill() })
		want := "not signed by the CA in --discovery.ca-file " + wrongCA
		waitFor(t, startTimeout, func() error {
			if p.exited() {
				t.Fatalf("the agent exited: %v", p.err)
			}
			if !strings.Contains(log.String(), want) {
				return fmt.Errorf("the agent has not logged %q", want)
			}
			return nil
		})
		if err := p.terminate(stopTimeout); err != nil {
			t.Errorf("stop agent: %v", err)
		}
	})
}

// TestAgentStatus_BeforeEnrollment: before it has a certificate the agent
// serves nothing, and agent-status on its state directory tells why.
func TestAgentStatus_BeforeEnrollment(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	a := startAgent(t, h.s, agentOptions{}) // no token in the token file yet
	status := func() (string, error) {
		out, err := exec.CommandContext(t.Context(), binary, "agent-status", "--agent.state-dir="+a.StateDir).CombinedOutput()
		return string(out), err
	}
	waitFor(t, startTimeout, func() error {
		out, err := status()
		if err == nil {
			return fmt.Errorf("agent-status exited 0 for an agent without a token:\n%s", out)
		}
		if !strings.Contains(out, "token_needed") || !strings.Contains(out, a.TokenFile) || !strings.Contains(out, "certificate:  none yet") {
			return fmt.Errorf("agent-status does not say a token is needed in %s:\n%s", a.TokenFile, out)
		}
		return nil
	})

	a.writeToken(t, h.enrollToken(t))
	a.waitState(t, h.scraper, "registered")
	waitFor(t, startTimeout, func() error {
		out, err := status()
		if err != nil {
			return fmt.Errorf("agent-status: %w\n%s", err, out)
		}
		if !strings.Contains(out, "state:        registered") || !strings.Contains(out, "valid until") {
			return fmt.Errorf("agent-status of a registered agent:\n%s", out)
		}
		return nil
	})
}

// TestServer_LogsEnrollmentsAndRefusals: the server says who enrolled
// with which token, and why it refused a registration.
func TestServer_LogsEnrollmentsAndRefusals(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t), Hostname: "e2e-logged"})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)

	status, _, err := tryRegister(t.Context(), t, h.s, "not-a-token", "e2e-impostor")
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusUnauthorized {
		t.Fatalf("registration with a bogus token: status %d, want 401", status)
	}
	for _, want := range []string{
		`msg="Agent enrolled" agent_id=` + id + ` hostname=e2e-logged remote_addr=127.0.0.1 token_id=`,
		`msg="Registration refused" remote_addr=127.0.0.1 reason=`,
	} {
		waitFor(t, startTimeout, func() error {
			if !strings.Contains(h.s.log.String(), want) {
				return fmt.Errorf("the server log has no %q", want)
			}
			return nil
		})
	}
}
