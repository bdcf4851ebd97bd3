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
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/heldexporter"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// readLeaf returns the agent's current certificate from its state directory.
func (a *agentProc) readLeaf(t *testing.T) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(a.StateDir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("cert.pem holds no PEM block")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// expiredServingClient scrapes an agent that still serves with its expired
// certificate: it checks the chain against the fleet CA as of just before
// the expiry, and presents cert. An operator does the same with curl
// --insecure; Prometheus would report "certificate has expired".
func expiredServingClient(t *testing.T, caPEM []byte, cert tls.Certificate) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA certificate")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert},
		// Verification is done below, with the clock set back.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no server certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := leaf.Verify(x509.VerifyOptions{
				Roots: pool, Intermediates: inter, DNSName: "127.0.0.1",
				CurrentTime: leaf.NotAfter.Add(-time.Second),
			})
			return err
		},
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: requestTimeout}
}

// TestAgent_NeedsNewTokenPastRenewalGrace: a host that was off for longer
// than its certificate's lifetime plus the server's renewal grace window
// cannot come back by its key alone. The agent says so in its log and its
// registration state, keeps running without hammering the server, and
// enrolls again as soon as a new token is put into its token file.
func TestAgent_NeedsNewTokenPastRenewalGrace(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	h := newAgentHarness(t, "--cert.ttl=4s", "--cert.renew-grace="+grace.String(), "--agent.ttl=8s")
	// No deregistration: the host loses power rather than being shut down,
	// so it comes back through POST /api/v1/renew.
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t), Args: []string{"--no-agent.deregister-on-shutdown"}})
	a.waitState(t, h.scraper, "registered")
	oldID := a.id(t)
	a.stop(t)
	if err := os.Remove(a.TokenFile); err != nil {
		t.Fatal(err)
	}

	leaf := a.readLeaf(t)
	waitFor(t, time.Minute, func() error {
		// The server refuses once more than the grace window has passed.
		if left := time.Until(leaf.NotAfter.Add(grace + 100*time.Millisecond)); left > 0 {
			return fmt.Errorf("still within the renewal grace window for %s", left)
		}
		return nil
	})

	a.start(t)
	expired := expiredServingClient(t, h.s.agentCAPEM(t), h.prom.KeyPair)
	a.waitState(t, expired, "token_needed")
	waitFor(t, startTimeout, func() error {
		// Backoff rounds pass; the agent keeps waiting for a token.
		if !strings.Contains(a.log.String(), "action=enroll attempt=3") {
			return errors.New("fewer than three enrollment attempts so far")
		}
		return nil
	})
	if a.proc.exited() {
		t.Fatalf("the agent exited while waiting for a token: %v", a.proc.err)
	}
	log := a.log.String()
	for _, want := range []string{"refused the expired certificate", "expired more than " + grace.String() + " ago", "A new enrollment token is needed"} {
		if !strings.Contains(log, want) {
			t.Errorf("the agent's log lacks %q", want)
		}
	}
	if n := strings.Count(log, "A new enrollment token is needed"); n != 1 {
		t.Errorf("the need for a token was logged %d times, want once per state change", n)
	}
	// The refused certificate is sent once, not once per attempt.
	if v, err := a.metric(t.Context(), expired, `baremetal_sd_agent_renewals_total{result="rejected"}`); err != nil || v != 1 {
		t.Errorf("rejected renewals = %v (%v), want 1", v, err)
	}
	if v, err := a.metric(t.Context(), expired, "baremetal_sd_agent_certificate_expiry_timestamp_seconds"); err != nil || v != float64(leaf.NotAfter.Unix()) {
		t.Errorf("certificate expiry metric = %v (%v), want %d", v, err, leaf.NotAfter.Unix())
	}

	a.writeToken(t, h.enrollToken(t))
	a.waitState(t, h.scraper, "registered")
	newID := a.id(t)
	if !strings.Contains(a.log.String(), "Enrolled with the enrollment token") {
		t.Error("the agent did not log its enrollment with the new token")
	}
	if got := sdTargetsOf(h.sd(t), newID); len(got) != 1 {
		t.Errorf("http_sd lists %+v for the re-enrolled agent %s, want its group", got, newID)
	}
	// A token without --agent.id enrolls a new agent; the old record gets
	// no heartbeats and leaves http_sd when its TTL runs out.
	waitFor(t, startTimeout, func() error {
		if got := sdTargetsOf(h.sd(t), oldID); newID != oldID && len(got) != 0 {
			return fmt.Errorf("http_sd still lists the old agent %s: %+v", oldID, got)
		}
		return nil
	})
	a.stop(t)
}

// TestAgent_SIGTERMFinishesInFlightScrape: on SIGTERM the agent refuses new
// connections at once, deregisters, lets the scrape already in flight
// complete, and exits 0.
func TestAgent_SIGTERMFinishesInFlightScrape(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	slow := heldexporter.Start(t)
	a := startAgent(t, h.s, agentOptions{
		Token: h.enrollToken(t),
		RelayConfig: fmt.Sprintf(`exporters:
  - name: slow
    url: %s
    timeout: 60s
`, slow.URL),
	})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)
	if got := sdTargetsOf(h.sd(t), id); len(got) != 2 {
		t.Fatalf("http_sd groups of agent %s: %+v, want the agent's and the slow exporter's", id, got)
	}

	type result struct {
		resp *response
		err  error
	}
	done := make(chan result, 1)
	scraper := h.s.agentClient(t, h.prom.KeyPair)
	scraper.Timeout = 2 * startTimeout
	go func() {
		resp, err := doRequest(t.Context(), scraper, http.MethodGet, a.URL+"/exporters/slow/metrics", "", nil)
		done <- result{resp, err}
	}()
	slow.WaitArrived(t, startTimeout)

	if err := a.proc.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, stopTimeout, func() error {
		c, err := net.DialTimeout("tcp", a.Addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		return errors.New("the agent still accepts connections after SIGTERM")
	})
	waitFor(t, stopTimeout, func() error {
		if got := sdTargetsOf(h.sd(t), id); len(got) != 0 {
			return fmt.Errorf("http_sd still lists the agent: %+v", got)
		}
		return nil
	})
	// Both happened while the scrape was held: the agent is still there.
	if a.proc.exited() {
		t.Fatalf("the agent exited (%v) before its in-flight scrape finished", a.proc.err)
	}

	slow.Release()
	var res result
	select {
	case res = <-done:
	case <-time.After(stopTimeout):
		t.Fatal("the in-flight scrape did not finish")
	}
	if res.err != nil {
		t.Fatalf("in-flight scrape: %v", res.err)
	}
	if res.resp.Status != http.StatusOK || !bytes.Contains(res.resp.Body, []byte("\nheld_exporter_value")) {
		t.Fatalf("in-flight scrape: status %d, body %q; want 200 with the exporter's metrics", res.resp.Status, res.resp.Body)
	}
	if !a.proc.wait(stopTimeout) {
		t.Fatal("the agent did not exit after its last scrape")
	}
	if a.proc.err != nil {
		t.Fatalf("the agent exited with %v, want status 0", a.proc.err)
	}
	if !strings.Contains(a.log.String(), "Deregistered") {
		t.Error("the agent did not log its deregistration")
	}
}

// TestAgent_NoDeregisterOnShutdownStaysListed: with
// --no-agent.deregister-on-shutdown a stopped agent stays in http_sd until
// its TTL runs out, so that a reboot does not flap the target away.
func TestAgent_NoDeregisterOnShutdownStaysListed(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t), Args: []string{"--no-agent.deregister-on-shutdown"}})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)
	a.stop(t)
	if got := sdTargetsOf(h.sd(t), id); len(got) != 1 || len(got[0].Targets) != 1 || got[0].Targets[0] != a.Addr {
		t.Errorf("http_sd after the agent exited: %+v, want its group for %s", got, a.Addr)
	}
	if strings.Contains(a.log.String(), "Deregistered") {
		t.Error("the agent deregistered although told not to")
	}
}

// operatorPKI is an operator's own CA, as a site with its own PKI has, with
// a serving certificate for 127.0.0.1 and a client certificate.
type operatorPKI struct {
	CAFile, CertFile, KeyFile string
	ca                        *x509.Certificate
	// CAPEM is the operator's CA certificate; Client is the operator's
	// client certificate with its key.
	CAPEM  []byte
	Client tls.Certificate
}

func newOperatorPKI(t *testing.T) *operatorPKI {
	t.Helper()
	dir := t.TempDir()
	operatorCA := testca.New(t, "operator CA")
	p := &operatorPKI{ca: operatorCA.Cert, CAPEM: operatorCA.PEM(), CAFile: filepath.Join(dir, "ca.crt")}
	if err := os.WriteFile(p.CAFile, p.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p.CertFile, p.KeyFile = operatorCA.Issue(t, testca.Leaf{
		CommonName: "agent.operator.example", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Usage: testca.ServerAuth,
	}).WriteFiles(t, dir, "agent")
	p.Client = operatorCA.Issue(t, testca.Leaf{CommonName: "operator-prometheus", Usage: testca.ClientAuth}).TLS()
	return p
}

// TestAgent_ServesWithOperatorWebConfig: with --web.config.file the agent
// serves the operator's certificate and enforces the operator's client
// authentication, while it enrolls and registers as usual.
func TestAgent_ServesWithOperatorWebConfig(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t)
	pki := newOperatorPKI(t)
	webConfig := filepath.Join(t.TempDir(), "web-config.yml")
	if err := os.WriteFile(webConfig, []byte(fmt.Sprintf(`tls_server_config:
  cert_file: %s
  key_file: %s
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: %s
`, pki.CertFile, pki.KeyFile, pki.CAFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t), Args: []string{"--web.config.file=" + webConfig}})

	operator := newClient(t, pki.CAPEM, pki.Client)
	a.waitState(t, operator, "registered")
	id := a.id(t)

	resp, err := operator.Get(a.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if served := resp.TLS.PeerCertificates[0]; served.Subject.CommonName != "agent.operator.example" || !bytes.Equal(served.RawIssuer, pki.ca.RawSubject) {
		t.Errorf("the agent serves %q issued by %q, want the operator's certificate", served.Subject.CommonName, served.Issuer.CommonName)
	}
	if _, err := os.Stat(filepath.Join(a.StateDir, "web-config.yml")); err == nil {
		t.Error("the agent wrote its own web config although the operator gave one")
	}

	refused := []struct {
		name   string
		client *http.Client
	}{
		{"no client certificate", newClient(t, pki.CAPEM)},
		{"the fleet's Prometheus certificate, not from the configured client CA", newClient(t, pki.CAPEM, h.prom.KeyPair)},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			if resp, err := doRequest(t.Context(), tt.client, http.MethodGet, a.URL+"/metrics", "", nil); err == nil {
				t.Fatalf("got status %d, want the TLS handshake refused", resp.Status)
			}
		})
	}
	if got := sdTargetsOf(h.sd(t), id); len(got) != 1 {
		t.Errorf("http_sd lists %+v for agent %s, want its group", got, id)
	}
	a.stop(t)
}
