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

package bench

import (
	"bufio"
	"bytes"
	"context"
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
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/baremetal-sd/baremetal_sd/bench/synthetic"
	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// maxReplyBody bounds what the load generator reads from a reply other than
// http_sd (register answers are a few KiB).
const maxReplyBody = 1 << 20

// maxSDBody bounds an http_sd reply: 100,000 agents with two target groups
// each are about 70 MB of JSON.
const maxSDBody = 1 << 30

// target is the server under test and what the load generator needs from
// its data directory.
type target struct {
	addr   string // host:port to dial
	host   string // Host header and TLS server name
	roots  *x509.CertPool
	tokens *ca.Tokens
	auth   *ca.Authority
	// pinned is the server certificate a first agent connection verified
	// in full; see agentTLS.
	pinned atomic.Pointer[[]byte]
}

// checkLoopback refuses anything but a loopback address: the load generator
// is for measuring a server on this machine, never for loading someone else's.
func parseServerURL(raw string) (addr, host string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("parse --server.url: %w", err)
	}
	if u.Scheme != "https" {
		return "", "", fmt.Errorf("--server.url must be https://, the server speaks TLS only")
	}
	h := u.Hostname()
	if h != "localhost" {
		ip := net.ParseIP(h)
		if ip == nil || !ip.IsLoopback() {
			return "", "", fmt.Errorf("--server.url host %q is not a loopback address: the load generator only targets this machine", h)
		}
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return net.JoinHostPort(h, port), h, nil
}

// newTarget reads the CA and the token key from the server's data dir.
func newTarget(serverURL, dataDir string) (*target, error) {
	addr, host, err := parseServerURL(serverURL)
	if err != nil {
		return nil, err
	}
	auth, err := ca.Load(dataDir)
	if err != nil {
		return nil, fmt.Errorf("load CA from %s: %w", dataDir, err)
	}
	key, err := ca.LoadTokenKey(dataDir)
	if err != nil {
		return nil, fmt.Errorf("load token key from %s: %w", dataDir, err)
	}
	return &target{addr: addr, host: host, roots: auth.Pool(), tokens: ca.NewTokens(key), auth: auth}, nil
}

// tlsConfig trusts the server's CA and presents cert if given. Session
// resumption is off: an enrolling agent has never talked to the server, so
// every new connection pays a full handshake.
func (t *target) tlsConfig(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: t.roots, ServerName: t.host, MinVersion: tls.VersionTLS12, VerifyConnection: client.VerifyServerRole}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// agentTLS is the configuration of a heartbeat on a new connection. The
// first one verifies the server's chain; later ones compare the server's
// certificate with that one byte for byte. The load generator shares the
// CPU with the server under test, and chain verification is work a real
// agent does on its own host.
//
// With resume, the connection resumes the agent's previous TLS session, as
// the agent's client does (one cache per agent, as on real hosts).
func (t *target) agentTLS(id *agentIdentity, resume bool) *tls.Config {
	cfg := t.tlsConfig(id.cert)
	if resume {
		cfg.ClientSessionCache = id.sessions
	}
	pinned := t.pinned.Load()
	if pinned == nil {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) > 0 {
				raw := cs.PeerCertificates[0].Raw
				t.pinned.CompareAndSwap(nil, &raw)
			}
			return nil
		}
		return cfg
	}
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, *pinned) {
			return errors.New("the server's certificate is not the one verified before")
		}
		return nil
	}
	return cfg
}

// enrollToken makes an enrollment token valid for the whole run.
func (t *target) enrollToken(ttl time.Duration, singleUse bool) (string, error) {
	tok, err := t.tokens.Create(ca.TokenSpec{Scope: ca.ScopeEnroll, TTL: ttl, SingleUse: singleUse}, time.Now())
	if err != nil {
		return "", fmt.Errorf("create enrollment token: %w", err)
	}
	return tok, nil
}

// clientCert issues a client certificate of the given role, the way
// `cert issue` does for Prometheus.
func (t *target) clientCert(role ca.Role) (*tls.Certificate, error) {
	certPEM, keyPEM, err := t.auth.IssueClient("bench-"+string(role), role, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("issue %s client certificate: %w", role, err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load %s client certificate: %w", role, err)
	}
	return &c, nil
}

// conn is one HTTP/1.1 keep-alive connection over TLS. The load generator
// shares the machine with the server, so it speaks HTTP on the connection
// itself instead of through net/http's Transport, whose per-connection
// goroutines and pooling would take CPU from the server under test.
type conn struct {
	tc *tls.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func dial(ctx context.Context, addr string, cfg *tls.Config) (*conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	tc := c.(*tls.Conn)
	return &conn{tc: tc, br: bufio.NewReaderSize(tc, 16<<10), bw: bufio.NewWriterSize(tc, 16<<10)}, nil
}

func (c *conn) Close() error { return c.tc.Close() }

// reply is what roundTrip returns: the status, the time the response header
// arrived (relative to the request) and the body (or only its length when
// discard is set).
type reply struct {
	status  int
	header  http.Header
	ttfb    time.Duration
	total   time.Duration
	body    []byte
	bodyLen int64
}

// roundTrip writes a prepared request and reads the whole reply, bounded by
// limit bytes and by deadline.
func (c *conn) roundTrip(req []byte, limit int64, keep bool, deadline time.Time) (reply, error) {
	var r reply
	if err := c.tc.SetDeadline(deadline); err != nil {
		return r, fmt.Errorf("set deadline: %w", err)
	}
	start := time.Now()
	if _, err := c.bw.Write(req); err != nil {
		return r, fmt.Errorf("write request: %w", err)
	}
	if err := c.bw.Flush(); err != nil {
		return r, fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return r, fmt.Errorf("read response: %w", err)
	}
	r.ttfb = time.Since(start)
	r.status = resp.StatusCode
	r.header = resp.Header
	body := io.LimitReader(resp.Body, limit)
	if keep {
		r.body, err = io.ReadAll(body)
		r.bodyLen = int64(len(r.body))
	} else {
		r.bodyLen, err = io.Copy(io.Discard, body)
	}
	resp.Body.Close()
	r.total = time.Since(start)
	if err != nil {
		return r, fmt.Errorf("read response body: %w", err)
	}
	if r.bodyLen >= limit {
		return r, fmt.Errorf("response body larger than %d bytes", limit)
	}
	return r, nil
}

// request renders an HTTP/1.1 request once so that loops only write bytes.
func request(method, host, path string, header map[string]string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: baremetal_sd-bench\r\n", method, path, host)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if body != nil || method == http.MethodPost {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// agentIdentity is one simulated host: its key, the CSR the agent would send
// and, once enrolled, its certificate.
type agentIdentity struct {
	hostname string
	address  string
	key      *ecdsa.PrivateKey
	csr      string
	cert     *tls.Certificate
	id       string
	// sessions is the agent's TLS session cache, when heartbeats resume
	// sessions as the agent does.
	sessions tls.ClientSessionCache
	// labels replace the default role="bench" when set.
	labels map[string]string
	// tunnel registers the agent for tunnels.
	tunnel bool
}

// newIdentity generates an agent key and CSR, as the agent does on its host.
func newIdentity(n int) (*agentIdentity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	host := "bench-" + strconv.Itoa(n) + ".example.com"
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: host},
		DNSNames: []string{host},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create csr: %w", err)
	}
	return &agentIdentity{
		hostname: host,
		address:  synthetic.Address(n),
		key:      key,
		csr:      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
	}, nil
}

func (id *agentIdentity) registerBody() ([]byte, error) {
	labels := id.labels
	if labels == nil {
		labels = map[string]string{"role": "bench"}
	}
	b, err := json.Marshal(protocol.RegisterRequest{
		Hostname:  id.hostname,
		Address:   id.address,
		Port:      9956,
		Labels:    labels,
		Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		CSR:       id.csr,
		Tunnel:    id.tunnel,
	})
	if err != nil {
		return nil, fmt.Errorf("encode register request: %w", err)
	}
	return b, nil
}

// statusError is a reply with an unexpected status.
type statusError struct {
	status int
	body   string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("unexpected status %d: %s", e.status, e.body)
}

// errorKind classifies a failure for the result table.
func errorKind(err error) string {
	var se *statusError
	if errors.As(err, &se) {
		return "http_" + strconv.Itoa(se.status)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "io"
}

// register enrolls id over c and installs the issued certificate.
func (t *target) register(c *conn, id *agentIdentity, token string, deadline time.Time) (time.Duration, error) {
	body, err := id.registerBody()
	if err != nil {
		return 0, err
	}
	req := request(http.MethodPost, t.host, protocol.PathRegister, map[string]string{
		"Authorization": "Bearer " + token,
		"Content-Type":  "application/json",
	}, body)
	r, err := c.roundTrip(req, maxReplyBody, true, deadline)
	if err != nil {
		return 0, err
	}
	if r.status != http.StatusOK {
		return 0, &statusError{r.status, truncate(r.body)}
	}
	var resp protocol.CertificateResponse
	if err := json.Unmarshal(r.body, &resp); err != nil {
		return 0, fmt.Errorf("decode register reply: %w", err)
	}
	cert, err := chainCertificate([]byte(resp.Certificate), id.key)
	if err != nil {
		return 0, err
	}
	id.cert, id.id = cert, resp.AgentID
	return r.total, nil
}

// chainCertificate pairs a PEM chain with its key without re-encoding the key.
func chainCertificate(chain []byte, key *ecdsa.PrivateKey) (*tls.Certificate, error) {
	var c tls.Certificate
	for {
		var blk *pem.Block
		blk, chain = pem.Decode(chain)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			c.Certificate = append(c.Certificate, blk.Bytes)
		}
	}
	if len(c.Certificate) == 0 {
		return nil, fmt.Errorf("register reply has no certificate")
	}
	// Parsed once here rather than by every handshake.
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("register reply: %w", err)
	}
	c.PrivateKey, c.Leaf = key, leaf
	return &c, nil
}

func truncate(b []byte) string {
	const n = 200
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// replicaPair is what the probes between two replicas (converge, lastseen)
// set up alike: the replica written through, the peer read with a client
// certificate of the given role, and an enrollment token valid for ttl.
type replicaPair struct {
	writer, reader *target
	readerCert     *tls.Certificate
	token          string
}

func newReplicaPair(serverURL, peerURL, dataDir string, role ca.Role, ttl time.Duration) (*replicaPair, error) {
	writer, err := newTarget(serverURL, dataDir)
	if err != nil {
		return nil, err
	}
	reader, err := newTarget(peerURL, dataDir)
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	cert, err := reader.clientCert(role)
	if err != nil {
		return nil, err
	}
	token, err := writer.enrollToken(ttl, false)
	if err != nil {
		return nil, err
	}
	return &replicaPair{writer: writer, reader: reader, readerCert: cert, token: token}, nil
}
