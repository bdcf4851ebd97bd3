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
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// recordedRequest is what an impostor saw of one request.
type recordedRequest struct {
	Method, Path string
	Header       http.Header
	Body         string
}

// impostor is a TLS server on 127.0.0.1 that poses as the discovery
// server and records every request that reaches it.
type impostor struct {
	URL string

	mu   sync.Mutex
	seen []recordedRequest
}

// startImpostor serves TLS with cert. answer, if given, replies to the
// requests; otherwise every request gets 200 and an empty JSON list.
func startImpostor(t *testing.T, cert tls.Certificate, answer func(w http.ResponseWriter, r *http.Request, body []byte)) *impostor {
	t.Helper()
	imp := &impostor{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		imp.mu.Lock()
		imp.seen = append(imp.seen, recordedRequest{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), Body: string(body)})
		imp.mu.Unlock()
		if answer != nil {
			answer(w, r, body)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("[]"))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	// Refused handshakes are the expected outcome; they are not news.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	imp.URL = srv.URL
	return imp
}

func (imp *impostor) requests() []recordedRequest {
	imp.mu.Lock()
	defer imp.mu.Unlock()
	return append([]recordedRequest(nil), imp.seen...)
}

// assertNothingReached fails the test if any request reached the impostor,
// showing the credentials it would have stolen.
func (imp *impostor) assertNothingReached(t *testing.T, who string, secrets ...string) {
	t.Helper()
	for _, r := range imp.requests() {
		stolen := r.Header.Get("Authorization")
		for _, s := range secrets {
			if strings.Contains(r.Body, s) || strings.Contains(fmt.Sprint(r.Header), s) {
				stolen += " " + s
			}
		}
		t.Errorf("%s sent %s %s to the impostor (credentials: %q)", who, r.Method, r.Path, stolen)
	}
}

// promConfigFromExamples is examples/prometheus.yml as an operator deploys
// it: the discovery server's address, the directory of `cert issue` and
// `token create` files, and the rules file put in; shorter intervals so
// that the test does not wait for minutes. Nothing else is changed.
func promConfigFromExamples(t *testing.T, serverAddr, certsDir string) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "examples", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer(
		"server.example.com:9955", serverAddr,
		"certs/", certsDir+"/",
		"rules/", filepath.Join(root, "examples", "rules")+"/",
		"scrape_interval: 15s", "scrape_interval: 1s",
		"refresh_interval: 30s", "refresh_interval: 1s",
	).Replace(string(data))
	// http_sd configs without refresh_interval refresh every minute; the
	// first refresh happens at start, which is all these tests need.
	return cfg
}

// prometheusCerts runs `cert issue` and `token create` as the example's
// header says, into a new directory.
func prometheusCerts(t *testing.T, dataDir string) string {
	t.Helper()
	certs := t.TempDir()
	writePrometheusCerts(t, dataDir, certs)
	return certs
}

// writePrometheusCerts is prometheusCerts into the directory certs.
func writePrometheusCerts(t *testing.T, dataDir, certs string) {
	t.Helper()
	runCLI(t, "cert", "issue", "--data.dir="+dataDir, "--name=prometheus", "--out.dir="+certs)
	tok := createToken(t, dataDir, "--scope=discovery", "--ttl=1h")
	if err := os.WriteFile(filepath.Join(certs, "discovery.token"), []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

var sdFailuresRE = regexp.MustCompile(`(?m)^prometheus_sd_http_failures_total(?:\{[^}]*\})? (\S+)$`)

// sdFailures sums prometheus_sd_http_failures_total from Prometheus' own
// /metrics.
func (p *testPrometheus) sdFailures(t *testing.T) (float64, error) {
	resp, err := doRequest(t.Context(), &http.Client{Timeout: requestTimeout}, http.MethodGet, p.URL+"/metrics", "", nil)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, m := range sdFailuresRE.FindAllStringSubmatch(string(resp.Body), -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

// runAgents runs `baremetal_sd agents ARGS...` and returns its combined
// output and error; a refusal is what these tests expect.
func runAgents(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), binary, append([]string{"agents"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// bundle writes the concatenation of files into a new file and returns its
// path.
func bundle(t *testing.T, files ...string) string {
	t.Helper()
	var b []byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, data...)
	}
	path := filepath.Join(t.TempDir(), "bundle.crt")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestImpostor_EnrolledHostCannotPoseAsServer is the attack of the security
// review: a host enrolls as localhost/127.0.0.1, serves TLS with the agent
// certificate it got, and waits for clients. Prometheus configured as
// examples/prometheus.yml says (client certificate and bearer token
// variants), a real agent with an enrollment token and `baremetal_sd agents
// list` are pointed at it: none may send it anything, and each says why.
func TestImpostor_EnrolledHostCannotPoseAsServer(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	evil := enroll(t, s, createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m"), protocol.RegisterRequest{
		Hostname: "localhost", Address: "127.0.0.1", Port: 9956,
	})
	// Each client gets an impostor of its own, so that what one sends is
	// not blamed on another.
	t.Run("prometheus", func(t *testing.T) {
		imp := startImpostor(t, evil.Cert, nil)
		impAddr := strings.TrimPrefix(imp.URL, "https://")
		certs := prometheusCerts(t, s.DataDir)
		token, err := os.ReadFile(filepath.Join(certs, "discovery.token"))
		if err != nil {
			t.Fatal(err)
		}
		prom := startPrometheus(t, promConfigFromExamples(t, impAddr, certs))
		// Three http_sd configs with a client certificate, one with the
		// bearer token: each refresh fails at the handshake, or reaches the
		// impostor.
		waitFor(t, 60*time.Second, func() error {
			n, err := prom.sdFailures(t)
			if err != nil {
				return err
			}
			if n < 4 && len(imp.requests()) == 0 {
				return fmt.Errorf("prometheus_sd_http_failures_total = %v, want every http_sd config to have failed", n)
			}
			return nil
		})
		imp.assertNothingReached(t, "Prometheus", strings.TrimSpace(string(token)))
		if !strings.Contains(prom.log.String(), "too many intermediates for path length constraint") {
			t.Errorf("Prometheus does not say why it refused the impostor")
		}
	})

	t.Run("agent", func(t *testing.T) {
		imp := startImpostor(t, evil.Cert, nil)
		tok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m", "--single-use")
		// The agent trusts the real server's ca.crt, as the systemd unit
		// does, but its URL leads to the impostor.
		a := startAgent(t, &testServer{URL: imp.URL, DataDir: s.DataDir}, agentOptions{Hostname: "victim", Token: tok})
		refusal := "too many intermediates for path length constraint"
		waitFor(t, startTimeout, func() error {
			if !strings.Contains(a.log.String(), refusal) && len(imp.requests()) == 0 {
				return fmt.Errorf("the agent has not refused the impostor yet")
			}
			return nil
		})
		a.stop(t)
		imp.assertNothingReached(t, "the agent", tok)
		if !strings.Contains(a.log.String(), refusal) {
			t.Fatalf("the agent does not say why it refused the impostor")
		}
		// The token was never spent: the real server still takes it.
		enroll(t, s, tok, protocol.RegisterRequest{Hostname: "victim", Address: "127.0.0.1", Port: 9956})
	})

	t.Run("agents list", func(t *testing.T) {
		imp := startImpostor(t, evil.Cert, nil)
		tests := []struct {
			name string
			args []string
			want string
		}{
			{"trusting the data dir's ca.crt", []string{"--data.dir=" + s.DataDir}, "too many intermediates for path length constraint"},
			// An operator's mistake: the CA file also holds the agent CA.
			// TLS accepts the impostor; the role check does not.
			{"trusting ca.crt and the agent CA", []string{"--data.dir=" + s.DataDir,
				"--tls.ca-file=" + bundle(t, filepath.Join(s.DataDir, ca.CertFile), filepath.Join(s.DataDir, ca.AgentCACertFile))}, `role "agent"`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				out, err := runAgents(t, append([]string{"list", "--server.url=" + imp.URL}, tt.args...)...)
				if err == nil || !strings.Contains(out, tt.want) {
					t.Errorf("agents list against the impostor: %v\n%s\nwant a refusal saying %q", err, out, tt.want)
				}
			})
		}
		imp.assertNothingReached(t, "agents list")
	})
}

// foreignServing makes a CA outside baremetal_sd (as an operator's own PKI
// or a TLS-terminating proxy would have) and a serving certificate of it
// for 127.0.0.1, and returns the certificate and the CA's PEM.
func foreignServing(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	corporate := testca.New(t, "corporate CA")
	serving := corporate.Issue(t, testca.Leaf{CommonName: "127.0.0.1", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Usage: testca.ServerAuth})
	return serving.TLS(), corporate.PEM()
}

// TestImpostor_ReplyCannotReplaceThePinnedCA: even a peer that gets past
// TLS (here one with a certificate of another CA the operator also put into
// --discovery.ca-file) cannot make the agent trust its CAs. Its register
// reply carries the CAs of another baremetal_sd fleet and a certificate
// from them; the agent refuses the reply, writes no CA for its relay, and
// so never serves a client certificate of the impostor's CA.
func TestImpostor_ReplyCannotReplaceThePinnedCA(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	other, _, err := ca.LoadOrCreate(filepath.Join(t.TempDir(), "other-fleet"))
	if err != nil {
		t.Fatal(err)
	}
	serving, corporatePEM := foreignServing(t)
	tests := []struct {
		name  string
		reply func(resp *protocol.CertificateResponse)
		want  string
	}{
		{"issuing CAs of another fleet", func(resp *protocol.CertificateResponse) {
			resp.CACertificate = string(other.ClientCACertificatePEM()) + string(other.AgentCACertificatePEM())
			resp.AgentCACertificate = string(other.AgentCACertificatePEM())
			resp.ClientCACertificate = string(other.ClientCACertificatePEM())
		}, "not signed by the pinned CA"},
		{"a 0.1.0 reply with another CA", func(resp *protocol.CertificateResponse) {
			resp.CACertificate = string(other.ClientCACertificatePEM()) + string(other.AgentCACertificatePEM())
		}, "not the CA in --discovery.ca-file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			imp := startImpostor(t, serving, func(w http.ResponseWriter, r *http.Request, body []byte) {
				if r.URL.Path != protocol.PathRegister {
					http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
					return
				}
				var req protocol.RegisterRequest
				if err := json.Unmarshal(body, &req); err != nil {
					http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
					return
				}
				csr, err := ca.ParseCSR([]byte(req.CSR))
				if err != nil {
					http.Error(w, `{"error":"bad csr"}`, http.StatusBadRequest)
					return
				}
				_, chain, err := other.SignAgent(ca.AgentCertRequest{AgentID: "captured", Hostname: req.Hostname, Address: "127.0.0.1", PublicKey: csr.PublicKey, TTL: time.Hour})
				if err != nil {
					http.Error(w, `{"error":"sign"}`, http.StatusInternalServerError)
					return
				}
				resp := protocol.CertificateResponse{AgentID: "captured", Certificate: string(chain), TTLSeconds: 300,
					HeartbeatIntervalSeconds: 60, RenewAfter: time.Now().Add(40 * time.Minute)}
				tt.reply(&resp)
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(resp)
			})
			// --discovery.ca-file: the real server's ca.crt and the
			// corporate CA.
			trust := t.TempDir()
			caPEM := append(append([]byte(nil), s.caPEM(t)...), corporatePEM...)
			if err := os.WriteFile(filepath.Join(trust, ca.CertFile), caPEM, 0o644); err != nil {
				t.Fatal(err)
			}
			a := startAgent(t, &testServer{URL: imp.URL, DataDir: trust}, agentOptions{Hostname: "victim", Token: "enroll-token"})
			waitFor(t, startTimeout, func() error {
				if !strings.Contains(a.log.String(), tt.want) {
					return fmt.Errorf("the agent has not refused the reply yet")
				}
				return nil
			})
			a.stop(t)
			for _, name := range []string{"ca.crt", "cert.pem"} {
				if _, err := os.Stat(filepath.Join(a.StateDir, name)); err == nil {
					t.Errorf("the agent wrote %s from the impostor's reply", name)
				}
			}
		})
	}
}
