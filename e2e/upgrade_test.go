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
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// downgradeTo010 turns a data directory and an agent state directory into
// what baremetal_sd 0.1.0 left: one CA (ca.crt and ca.key, whose template
// this version did not change) that signed the serving certificate and the
// agent certificate directly, no issuing CAs, the web config trusting
// ca.crt for clients, and the agent holding a certificate signed by ca.key
// with the serial its registry record names (the record format did not
// change either) and ca.crt as its relay's client CA.
func downgradeTo010(t *testing.T, dataDir, stateDir string) {
	t.Helper()
	for _, name := range []string{ca.AgentCACertFile, ca.AgentCAKeyFile, ca.ClientCACertFile, ca.ClientCAKeyFile, ca.ClientCAsFile} {
		if err := os.Remove(filepath.Join(dataDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	webConfig := "# Written by baremetal_sd server because no --web.config.file was given.\n" +
		"# Pass your own web config to change it; this file is rewritten on start.\n" +
		"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" +
		"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
	if err := os.WriteFile(filepath.Join(dataDir, "web-config.yml"), []byte(webConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	root := testca.Load(t, filepath.Join(dataDir, ca.CertFile), filepath.Join(dataDir, ca.KeyFile))
	certPEM, err := os.ReadFile(filepath.Join(stateDir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.ParseCertificatePEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	chain := root.Resign(t, leaf).ChainPEM()
	if err := os.WriteFile(filepath.Join(stateDir, "cert.pem"), chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stateDir, "ca.crt"), root.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestUpgrade_From010DataDir starts this version on what a 0.1.0 server and
// agent left. The server keeps ca.crt (which agents and Prometheus trust)
// and creates the issuing CAs; the agent's 0.1.0 certificate still
// authenticates it, and the server has it renewed at once, from the agent
// CA; that old certificate is never accepted as the server by our clients;
// Prometheus configured as the new examples say discovers and scrapes the
// host and the server.
func TestUpgrade_From010DataDir(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	node := startNodeExporter(t)
	a := startAgent(t, s, agentOptions{
		Hostname:    "old-host",
		Token:       createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m", "--single-use"),
		RelayConfig: fmt.Sprintf("exporters:\n  - name: node\n    url: http://%s/metrics\n", node),
		Args:        []string{"--no-agent.deregister-on-shutdown"},
	})
	waitFor(t, startTimeout, func() error {
		_, err := os.Stat(filepath.Join(a.StateDir, "agent.json"))
		return err
	})
	a.stop(t)
	s.stop(t)
	downgradeTo010(t, s.DataDir, a.StateDir)
	oldCA := s.caPEM(t)
	legacyLeaf := a.readLeaf(t)
	if legacyLeaf.Issuer.CommonName != "baremetal_sd CA" {
		t.Fatalf("the 0.1.0 agent certificate is issued by %q", legacyLeaf.Issuer.CommonName)
	}

	s.start(t)
	if !bytes.Equal(s.caPEM(t), oldCA) {
		t.Fatal("the upgrade replaced ca.crt, which agents and Prometheus trust")
	}
	for _, name := range []string{ca.AgentCACertFile, ca.ClientCACertFile, ca.ClientCAsFile} {
		if _, err := os.Stat(filepath.Join(s.DataDir, name)); err != nil {
			t.Fatalf("the upgrade did not create %s: %v", name, err)
		}
	}

	t.Run("0.1.0 agent certificate as the server", func(t *testing.T) {
		legacy, err := tls.LoadX509KeyPair(filepath.Join(a.StateDir, "cert.pem"), filepath.Join(a.StateDir, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		imp := startImpostor(t, legacy, nil)
		out, err := runAgents(t, "list", "--server.url="+imp.URL, "--data.dir="+s.DataDir)
		if err == nil || !strings.Contains(out, `role "agent"`) {
			t.Fatalf("agents list against an impostor with a 0.1.0 agent certificate: %v\n%s", err, out)
		}
		imp.assertNothingReached(t, "agents list")
	})

	// The token was single-use and is spent: only the 0.1.0 certificate
	// can authenticate the agent.
	if err := os.Remove(a.TokenFile); err != nil {
		t.Fatal(err)
	}
	a.start(t)
	waitFor(t, startTimeout, func() error {
		if a.proc.exited() {
			t.Fatalf("agent exited: %v", a.proc.err)
		}
		if leaf := a.readLeaf(t); leaf.Issuer.CommonName != "baremetal_sd agent CA" {
			return fmt.Errorf("agent certificate still issued by %q", leaf.Issuer.CommonName)
		}
		return nil
	})
	if !strings.Contains(a.log.String(), "renew the certificate now") {
		t.Error("the agent did not renew because the server asked it to")
	}

	certs := prometheusCerts(t, s.DataDir)
	prom := startPrometheus(t, promConfigFromExamples(t, s.Addr, certs))
	for _, job := range []string{"node", "baremetal_sd_agent", "baremetal_sd_server"} {
		waitFor(t, 90*time.Second, func() error {
			samples, err := prom.query(t.Context(), `up{job="`+job+`"}`)
			if err != nil {
				return err
			}
			if len(samples) != 1 || samples[0].Value != "1" {
				ts, _ := prom.targets(t.Context())
				return fmt.Errorf("up{job=%q} = %v (targets %+v)", job, samples, ts)
			}
			return nil
		})
	}
}
