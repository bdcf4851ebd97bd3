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
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/freeport"
	"github.com/baremetal-sd/baremetal_sd/internal/poll"
	"github.com/baremetal-sd/baremetal_sd/internal/syncbuf"
)

// Bounds of every wait in this package. They are generous because the tests
// run under the race detector on small CI machines; a healthy run finishes
// each wait far sooner.
const (
	// startTimeout bounds how long a daemon may take to become ready.
	startTimeout = 30 * time.Second
	// stopTimeout bounds a graceful shutdown after SIGTERM.
	stopTimeout = 15 * time.Second
	// requestTimeout bounds one HTTP request made by a test.
	requestTimeout = 10 * time.Second
	// cliTimeout bounds one run of a baremetal_sd admin command.
	cliTimeout = 30 * time.Second
	// maxLogDump is how much of a daemon's output a failed test prints (the
	// tail, where the reason usually is).
	maxLogDump = 256 << 10
)

// prometheusBinary is where Debian's prometheus package installs the server
// (2.42).
const prometheusBinary = "/usr/bin/prometheus"

// prometheus3Binary is where scripts/install-test-deps.sh caches the
// Prometheus 3 it builds from the Go module proxy; BAREMETAL_SD_PROMETHEUS3
// overrides it, in the script as here.
func prometheus3Binary() string {
	if p := os.Getenv("BAREMETAL_SD_PROMETHEUS3"); p != "" {
		return p
	}
	return "/var/cache/baremetal_sd-test/prometheus-v0.316.0/prometheus"
}

// prometheusRelease is one Prometheus that end-to-end tests run against.
type prometheusRelease struct {
	// Name names the subtest, e.g. "prometheus2".
	Name   string
	Binary string
}

// prometheusReleases are the Prometheus servers whose differences matter
// to this project: Debian's 2.42 and the Prometheus 3 users run. They
// differ in the Accept header they scrape with and its escaping scheme,
// how strictly they read a target's Content-Type, and their http_sd client.
func prometheusReleases() []prometheusRelease {
	return []prometheusRelease{
		{Name: "prometheus2", Binary: prometheusBinary},
		{Name: "prometheus3", Binary: prometheus3Binary()},
	}
}

// binary is the path of the baremetal_sd binary built by TestMain. It is set
// once before any test runs and only read afterwards, so sharing it between
// parallel tests is safe; building once keeps the package fast.
var binary string

// serverBinary is the binary the server processes run. When the tests run
// under the race detector it is a second build with -race, so that the
// end-to-end load (registration bursts, heartbeats, replicas) is checked for
// data races in the real server too. Agents keep the plain build: their
// memory bound is measured, and the race runtime multiplies memory.
var serverBinary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "baremetal_sd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: create temporary directory:", err)
		return 1
	}
	defer os.RemoveAll(dir)

	bin := filepath.Join(dir, "baremetal_sd")
	goTool := os.Getenv("GO") // the Makefile exports the go it uses
	if goTool == "" {
		goTool = "go"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := func(out string, flags ...string) error {
		args := append(append([]string{"build"}, flags...), "-o", out, "github.com/baremetal-sd/baremetal_sd")
		cmd := exec.CommandContext(ctx, goTool, args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build baremetal_sd %s: %w\n%s", strings.Join(flags, " "), err, b)
		}
		return nil
	}
	if err := build(bin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	binary, serverBinary = bin, bin
	if raceEnabled {
		serverBinary = filepath.Join(dir, "baremetal_sd-race")
		if err := build(serverBinary, "-race"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
	}
	return m.Run()
}

// repoRoot finds the module root: the nearest parent of the working
// directory (the e2e package directory under go test) holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find repository root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// freePort returns a TCP port on 127.0.0.1 for a daemon to bind.
func freePort(t testing.TB) int {
	t.Helper()
	return freeport.Port(t)
}

// waitFor is poll.Until, under the name the end-to-end tests use.
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	poll.Until(t, timeout, cond)
}

// logBuffer collects a daemon's stdout and stderr, written by exec's
// copying goroutines while the test reads it.
type logBuffer struct{ syncbuf.Buffer }

// tail returns at most the last n bytes written.
func (b *logBuffer) tail(n int) string {
	s := b.String()
	if len(s) <= n {
		return s
	}
	return "[...]\n" + s[len(s)-n:]
}

// dumpOnFailure makes a failed test print what a daemon wrote. Register it
// before the cleanup that stops the daemon: cleanups run last-in first-out,
// so the dump then includes the shutdown.
func dumpOnFailure(t testing.TB, name string, log *logBuffer) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, log.tail(maxLogDump))
		}
	})
}

// process is a daemon started by a test.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // the result of Wait; read it only after done is closed
}

// startProcess starts bin with args, writing its stdout and stderr to log.
func startProcess(t testing.TB, name string, log io.Writer, bin string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	// Bound Wait even if the process left a child holding its output open.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig; a process that has already exited is not an error. It
// is safe to call from any goroutine.
func (p *process) signal(sig os.Signal) error {
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// wait waits up to timeout for the process to exit and reports whether it
// did; p.err then holds Wait's error (nil for exit status 0).
func (p *process) wait(timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return true
	case <-timer.C:
		return false
	}
}

// terminate stops the process gracefully with SIGTERM, or with SIGKILL
// once timeout has passed. It returns an error unless the process exited
// with status 0 within timeout.
func (p *process) terminate(timeout time.Duration) error {
	if err := p.signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal %s: %w", p.name, err)
	}
	if p.wait(timeout) {
		if p.err != nil {
			return fmt.Errorf("%s exited after SIGTERM: %w", p.name, p.err)
		}
		return nil
	}
	_ = p.signal(syscall.SIGKILL)
	if !p.wait(timeout) {
		return fmt.Errorf("%s survived SIGKILL for %s", p.name, timeout)
	}
	return fmt.Errorf("%s did not exit within %s of SIGTERM and was killed", p.name, timeout)
}

// kill ends the process with SIGKILL and waits for it.
func (p *process) kill() error {
	if err := p.signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	if !p.wait(stopTimeout) {
		return fmt.Errorf("%s survived SIGKILL for %s", p.name, stopTimeout)
	}
	return nil
}

// testServer is a baremetal_sd server process. Stop, kill and restart it
// through its methods; it is killed when the test ends.
type testServer struct {
	// DataDir is the server's --data.dir.
	DataDir string
	// Addr is the listen address, 127.0.0.1:PORT. It stays the same across
	// restarts, so clients and Prometheus configurations remain valid.
	Addr string
	// URL is https://Addr.
	URL string

	args []string // the command line, "server" included
	log  *logBuffer
	proc *process
}

// startServer starts `baremetal_sd server` and waits until /-/ready answers
// 200 over TLS. Without --data.dir in args it uses a new directory (that
// does not exist yet) under t.TempDir(); without --web.listen-address a free
// port on 127.0.0.1; without --log.level debug logging. The process is
// killed when the test ends, and its output is logged if the test failed.
func startServer(t testing.TB, args ...string) *testServer {
	t.Helper()
	s := &testServer{log: &logBuffer{}}
	var hasLogLevel bool
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "--data.dir="):
			s.DataDir = strings.TrimPrefix(a, "--data.dir=")
		case strings.HasPrefix(a, "--web.listen-address="):
			s.Addr = strings.TrimPrefix(a, "--web.listen-address=")
		case strings.HasPrefix(a, "--log.level="):
			hasLogLevel = true
		}
	}
	full := append([]string{"server"}, args...)
	if s.DataDir == "" {
		s.DataDir = filepath.Join(t.TempDir(), "data")
		full = append(full, "--data.dir="+s.DataDir)
	}
	if s.Addr == "" {
		s.Addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		full = append(full, "--web.listen-address="+s.Addr)
	}
	if !hasLogLevel {
		full = append(full, "--log.level=debug")
	}
	s.URL = "https://" + s.Addr
	s.args = full

	dumpOnFailure(t, "baremetal_sd server "+s.Addr, s.log)
	t.Cleanup(func() {
		if s.proc != nil && !s.proc.exited() {
			_ = s.proc.kill()
		}
		if strings.Contains(s.log.String(), "WARNING: DATA RACE") {
			t.Errorf("server %s reported a data race (its output is logged above or below)", s.Addr)
		}
	})
	s.start(t)
	return s
}

// start runs the server process and waits until it is ready.
func (s *testServer) start(t testing.TB) {
	t.Helper()
	fmt.Fprintf(s.log, "=== %s %s\n", filepath.Base(serverBinary), strings.Join(s.args, " "))
	s.proc = startProcess(t, "baremetal_sd server", s.log, serverBinary, s.args...)
	s.waitReady(t)
}

// waitReady polls /-/ready until it answers 200. The CA is read from the
// data directory, where the server creates it on first start.
func (s *testServer) waitReady(t testing.TB) {
	t.Helper()
	var client *http.Client
	waitFor(t, startTimeout, func() error {
		if s.proc.exited() {
			t.Fatalf("server exited while starting: %v", s.proc.err)
		}
		if client == nil {
			caPEM, err := os.ReadFile(filepath.Join(s.DataDir, "ca.crt"))
			if err != nil {
				return fmt.Errorf("server not ready: %w", err)
			}
			client = newClient(t, caPEM)
		}
		resp, err := doRequest(t.Context(), client, http.MethodGet, s.URL+"/-/ready", "", nil)
		if err != nil {
			return fmt.Errorf("server not ready: %w", err)
		}
		if resp.Status != http.StatusOK {
			return fmt.Errorf("server not ready: /-/ready answered %d: %s", resp.Status, resp.Body)
		}
		return nil
	})
}

// stop sends SIGTERM and fails the test unless the server exits with status
// 0 within stopTimeout.
func (s *testServer) stop(t testing.TB) {
	t.Helper()
	if err := s.proc.terminate(stopTimeout); err != nil {
		t.Errorf("stop server: %v", err)
	}
}

// kill sends SIGKILL and waits for the process to end. It may be called
// from any goroutine (it does not touch t).
func (s *testServer) kill() error {
	return s.proc.kill()
}

// restart stops a running server gracefully (see stop) and starts it again
// with the same command line, data directory and address; after kill it
// only starts it.
func (s *testServer) restart(t testing.TB) {
	t.Helper()
	if !s.proc.exited() {
		s.stop(t)
	}
	s.start(t)
}

// caPEM returns the CA certificate from the data directory.
func (s *testServer) caPEM(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.DataDir, "ca.crt"))
	if err != nil {
		t.Fatalf("read CA certificate: %v", err)
	}
	return b
}

// replicaDataDir makes the data directory of a second replica sharing
// etcd with the one in dataDir: the CAs and the token key copied, as the
// high-availability docs tell operators.
func replicaDataDir(t testing.TB, dataDir string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data-b")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{ca.CertFile, ca.KeyFile, ca.AgentCACertFile, ca.AgentCAKeyFile, ca.ClientCACertFile, ca.ClientCAKeyFile, ca.TokenKeyFile} {
		data, err := os.ReadFile(filepath.Join(dataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// agentCAPEM returns the agent CA certificate from the data directory:
// what verifies agents.
func (s *testServer) agentCAPEM(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.DataDir, "agent-ca.crt"))
	if err != nil {
		t.Fatalf("read agent CA certificate: %v", err)
	}
	return b
}

// agentClient returns an HTTPS client that trusts the agent CA, as a
// scraper of agents does, and presents certs.
func (s *testServer) agentClient(t testing.TB, certs ...tls.Certificate) *http.Client {
	t.Helper()
	return newClient(t, s.agentCAPEM(t), certs...)
}

// client returns an HTTPS client that trusts the server's CA and presents
// certs as client certificates (none: anonymous or token requests).
func (s *testServer) client(t testing.TB, certs ...tls.Certificate) *http.Client {
	t.Helper()
	return newClient(t, s.caPEM(t), certs...)
}

// newClient returns an HTTPS client that trusts only the CA certificates in
// caPEM and presents certs to servers asking for a client certificate. Its
// idle connections are closed when the test ends.
func newClient(t testing.TB, caPEM []byte, certs ...tls.Certificate) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no CA certificate in %q", caPEM)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs:      pool,
			Certificates: certs,
			MinVersion:   tls.VersionTLS12,
		},
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     30 * time.Second,
		TLSHandshakeTimeout: requestTimeout,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: requestTimeout}
}

// loadKeyPair reads a PEM certificate and key, as written by `cert issue`.
func loadKeyPair(t testing.TB, certFile, keyFile string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("load key pair: %v", err)
	}
	return c
}

// response is a fully read HTTP response.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// doRequest sends one request and reads the whole response. A non-empty
// token is sent as a bearer token. body may be nil (no body), a []byte
// (sent as is) or anything else (sent as JSON). It does not touch a
// testing.T, so goroutines may use it.
func doRequest(ctx context.Context, c *http.Client, method, url, token string, body any) (*response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("encode request body: %w", err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: read response: %w", method, url, err)
	}
	return &response{Status: resp.StatusCode, Header: resp.Header, Body: data}, nil
}

// mustRequest is doRequest that fails the test on transport errors and, if
// wantStatus is not 0, on any other status code.
func mustRequest(t testing.TB, c *http.Client, method, url, token string, body any, wantStatus int) *response {
	t.Helper()
	resp, err := doRequest(t.Context(), c, method, url, token, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if wantStatus != 0 && resp.Status != wantStatus {
		t.Fatalf("%s %s: status %d, want %d; body: %s", method, url, resp.Status, wantStatus, resp.Body)
	}
	return resp
}

// decodeStrict decodes a JSON body into v, refusing unknown fields and
// trailing data.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode %q: %w", truncate(body), err)
	}
	if dec.More() {
		return fmt.Errorf("decode %q: trailing data", truncate(body))
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 512 {
		return string(b[:512]) + "..."
	}
	return string(b)
}

// runCLI runs the built binary with args (for example "token", "create",
// ...), fails the test unless it exits 0 and returns its stdout.
func runCLI(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("baremetal_sd %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// createToken runs `baremetal_sd token create --data.dir=DATADIR ARGS...`
// (for example "--scope=discovery") and returns the token.
func createToken(t testing.TB, dataDir string, args ...string) string {
	t.Helper()
	out := runCLI(t, append([]string{"token", "create", "--data.dir=" + dataDir}, args...)...)
	tok := strings.TrimSpace(out)
	if tok == "" || strings.ContainsAny(tok, " \n") {
		t.Fatalf("token create printed %q, want one token", out)
	}
	return tok
}

// clientCert is a client certificate written by `cert issue`.
type clientCert struct {
	// CAFile is the server CA (verifies the server), AgentCAFile the agent
	// CA (verifies agents).
	CertFile, KeyFile, CAFile, AgentCAFile string
	// KeyPair is the certificate and key, loaded, for Go clients.
	KeyPair tls.Certificate
}

// issueCert runs `baremetal_sd cert issue` for name with role (discovery or
// admin) into a new directory and checks the files it promises.
func issueCert(t testing.TB, dataDir, name, role string) clientCert {
	t.Helper()
	out := t.TempDir()
	runCLI(t, "cert", "issue", "--data.dir="+dataDir, "--name="+name, "--role="+role, "--out.dir="+out)
	c := clientCert{
		CertFile:    filepath.Join(out, name+".crt"),
		KeyFile:     filepath.Join(out, name+".key"),
		CAFile:      filepath.Join(out, "ca.crt"),
		AgentCAFile: filepath.Join(out, "agent-ca.crt"),
	}
	if fi, err := os.Stat(c.KeyFile); err != nil {
		t.Fatalf("cert issue: %v", err)
	} else if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("cert issue wrote %s with mode %o, want 600", c.KeyFile, perm)
	}
	c.KeyPair = loadKeyPair(t, c.CertFile, c.KeyFile)
	return c
}

// newKey generates an agent key the way an agent does: on the host.
func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	return key
}

// makeCSR returns a PEM certificate request for key. The server decides the
// SANs from the registration, so only the common name is set.
func makeCSR(key crypto.Signer, commonName string) (string, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName},
	}, key)
	if err != nil {
		return "", fmt.Errorf("create CSR: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// keyPairFromPEM combines a PEM certificate chain, as in
// CertificateResponse.Certificate, with its private key.
func keyPairFromPEM(chainPEM string, key crypto.PrivateKey) (tls.Certificate, error) {
	var c tls.Certificate
	rest := []byte(chainPEM)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			c.Certificate = append(c.Certificate, block.Bytes)
		}
	}
	if len(c.Certificate) == 0 {
		return c, errors.New("no certificate in the PEM chain")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return c, fmt.Errorf("parse certificate: %w", err)
	}
	c.Leaf = leaf
	c.PrivateKey = key
	return c, nil
}

// testAgent is an agent enrolled by the test itself, with a key and CSR
// made in the test, as opposed to the agent role of the binary.
type testAgent struct {
	ID   string
	Key  *ecdsa.PrivateKey
	Resp protocol.CertificateResponse
	// Cert is the issued certificate with Key: the agent's mTLS identity and
	// the certificate it serves its endpoints with.
	Cert tls.Certificate
	// Client talks to the server with Cert.
	Client *http.Client
}

// enroll registers an agent with an enrollment token. A new key and CSR
// are made unless req.CSR is set; the registration must succeed.
func enroll(t testing.TB, s *testServer, token string, req protocol.RegisterRequest) *testAgent {
	t.Helper()
	a := &testAgent{}
	if req.CSR == "" {
		a.Key = newKey(t)
		csr, err := makeCSR(a.Key, req.Hostname)
		if err != nil {
			t.Fatal(err)
		}
		req.CSR = csr
	}
	resp := mustRequest(t, s.client(t), http.MethodPost, s.URL+protocol.PathRegister, token, req, http.StatusOK)
	if err := decodeStrict(resp.Body, &a.Resp); err != nil {
		t.Fatalf("register: %v", err)
	}
	if a.Resp.AgentID == "" {
		t.Fatalf("register: no agent_id in %s", resp.Body)
	}
	a.ID = a.Resp.AgentID
	if a.Key != nil {
		cert, err := keyPairFromPEM(a.Resp.Certificate, a.Key)
		if err != nil {
			t.Fatalf("register: %v", err)
		}
		a.Cert = cert
		a.Client = s.client(t, cert)
	}
	return a
}

// testPrometheus is a Prometheus server started by startPrometheus.
type testPrometheus struct {
	// URL is http://127.0.0.1:PORT.
	URL  string
	log  *logBuffer
	proc *process
}

// startPrometheus runs the Debian package's Prometheus with configYAML as
// its configuration (paths in it should be absolute), a fresh TSDB and
// debug logging on a free port, and waits until it is ready. It is stopped
// when the test ends and its output logged if the test failed.
func startPrometheus(t testing.TB, configYAML string) *testPrometheus {
	t.Helper()
	return startPrometheusBinary(t, prometheusBinary, configYAML)
}

// startPrometheusBinary is startPrometheus with the Prometheus binary to
// run, one of prometheusReleases.
func startPrometheusBinary(t testing.TB, binary, configYAML string) *testPrometheus {
	t.Helper()
	return startPrometheusIn(t, binary, t.TempDir(), func(string) string { return configYAML })
}

// startPrometheusIn is startPrometheusBinary with the configuration
// written to dir/prometheus.yml, so that relative paths in it resolve
// against dir as they do for an operator, and made by config from the
// address Prometheus will listen on.
func startPrometheusIn(t testing.TB, binary, dir string, config func(addr string) string) *testPrometheus {
	t.Helper()
	if _, err := os.Stat(binary); err != nil {
		t.Fatalf("%s is missing (%v): run scripts/install-test-deps.sh (make test does)", binary, err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	configYAML := config(addr)
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(configYAML), 0o600); err != nil {
		t.Fatalf("write prometheus.yml: %v", err)
	}
	p := &testPrometheus{URL: "http://" + addr, log: &logBuffer{}}
	fmt.Fprintf(p.log, "=== prometheus.yml:\n%s\n", configYAML)
	dumpOnFailure(t, "prometheus "+addr, p.log)
	p.proc = startProcess(t, "prometheus", p.log, binary,
		"--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(t.TempDir(), "tsdb"),
		"--web.listen-address="+addr,
		"--log.level=debug",
	)
	t.Cleanup(func() {
		if !p.proc.exited() {
			_ = p.proc.terminate(stopTimeout)
		}
	})
	client := &http.Client{Timeout: requestTimeout}
	waitFor(t, startTimeout, func() error {
		if p.proc.exited() {
			t.Fatalf("prometheus exited while starting: %v", p.proc.err)
		}
		resp, err := doRequest(t.Context(), client, http.MethodGet, p.URL+"/-/ready", "", nil)
		if err != nil {
			return fmt.Errorf("prometheus not ready: %w", err)
		}
		if resp.Status != http.StatusOK {
			return fmt.Errorf("prometheus not ready: /-/ready answered %d", resp.Status)
		}
		return nil
	})
	return p
}

// promTarget is one target of Prometheus' /api/v1/targets.
type promTarget struct {
	DiscoveredLabels map[string]string `json:"discoveredLabels"`
	Labels           map[string]string `json:"labels"`
	ScrapePool       string            `json:"scrapePool"`
	ScrapeURL        string            `json:"scrapeUrl"`
	Health           string            `json:"health"`
	LastError        string            `json:"lastError"`
	// LastScrape is zero before the first scrape.
	LastScrape         time.Time `json:"lastScrape"`
	LastScrapeDuration float64   `json:"lastScrapeDuration"`
}

// promTargets is the data of /api/v1/targets.
type promTargets struct {
	Active  []promTarget `json:"activeTargets"`
	Dropped []promTarget `json:"droppedTargets"`
}

// promSample is one element of an instant vector from /api/v1/query.
type promSample struct {
	Metric map[string]string
	// Value is the sample value as Prometheus formats it ("1", "NaN").
	Value string
}

// api calls a Prometheus API endpoint and decodes its data field into v.
// It does not touch a testing.T, so it suits waitFor conditions.
func (p *testPrometheus) api(ctx context.Context, path string, v any) error {
	resp, err := doRequest(ctx, &http.Client{Timeout: requestTimeout}, http.MethodGet, p.URL+path, "", nil)
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal(resp.Body, &env); err != nil {
		return fmt.Errorf("prometheus %s: status %d: %w", path, resp.Status, err)
	}
	if resp.Status != http.StatusOK || env.Status != "success" {
		return fmt.Errorf("prometheus %s: status %d: %s", path, resp.Status, env.Error)
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		return fmt.Errorf("prometheus %s: %w", path, err)
	}
	return nil
}

// targets returns Prometheus' active and dropped targets.
func (p *testPrometheus) targets(ctx context.Context) (*promTargets, error) {
	var ts promTargets
	if err := p.api(ctx, "/api/v1/targets", &ts); err != nil {
		return nil, err
	}
	return &ts, nil
}

// query evaluates an instant query and returns its vector.
func (p *testPrometheus) query(ctx context.Context, expr string) ([]promSample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := p.api(ctx, "/api/v1/query?query="+url.QueryEscape(expr), &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %q, want vector", expr, data.ResultType)
	}
	out := make([]promSample, 0, len(data.Result))
	for _, r := range data.Result {
		v, _ := r.Value[1].(string)
		out = append(out, promSample{Metric: r.Metric, Value: v})
	}
	return out, nil
}
