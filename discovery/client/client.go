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

package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// MaxResponseBody bounds every response body the client reads. The largest
// legitimate answer, a certificate response, is a few kilobytes.
const MaxResponseBody = 1 << 20

// maxErrorMessage bounds the server's error text kept in an APIError; it is
// logged, so a hostile or broken server must not flood the logs.
const maxErrorMessage = 512

// DefaultClientTimeout bounds one request to one server.
const DefaultClientTimeout = 30 * time.Second

// minAttemptTimeout is the least time one request to one server gets when
// the servers' TTL bounds it (see Client.attemptTimeout).
const minAttemptTimeout = time.Second

// maxObservedSeconds caps a TTL or heartbeat interval taken by Observe: ten
// years, far above any TTL that bounds a request, far below an overflow.
const maxObservedSeconds = 10 * 366 * 24 * 3600

// Config configures a Client.
type Config struct {
	// URLs are the base URLs of the discovery servers, for example
	// https://sd.example.com:9955. Only https is accepted. Requests go to the
	// server that answered last and fail over to the others, in order, when
	// it cannot be reached or answers 5xx.
	URLs []string
	// RootCAs verifies the servers' certificates; nil means the system roots.
	// There is deliberately no way to skip verification: the agent sends its
	// enrollment token to whoever it talks to.
	RootCAs *x509.CertPool
	// GetClientCertificate returns the agent's certificate for mTLS. It is
	// called on every TLS handshake, so a renewed certificate is used from
	// the next connection on without rebuilding the client. It may return an
	// empty certificate to send none. Nil means never send a certificate.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// Timeout bounds one request to one server, including reading the
	// response; DefaultClientTimeout when zero. Once a server has told the
	// agent its TTL and heartbeat interval, or the agent passed what they
	// said before (see Observe), a request to one server is also bounded
	// so that trying every server fits in the time the TTL leaves after a
	// heartbeat interval (see attemptTimeout).
	Timeout time.Duration
	// UserAgent is sent with every request.
	UserAgent string
}

// Client talks to the discovery servers' agent API: register, heartbeat,
// renew and deregister. It is safe for concurrent use.
type Client struct {
	urls      []*url.URL
	http      *http.Client
	transport *http.Transport
	timeout   time.Duration
	userAgent string

	mu      sync.Mutex
	current int // index of the server that answered last
	// ttlBound is the bound on one attempt that the servers' TTL and
	// heartbeat interval impose; zero until Observe has been told them.
	ttlBound time.Duration
}

// APIError is a reply from a server with a status other than 2xx.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Message is the server's error text, shortened and stripped of control
	// characters, or the status text when the body held none.
	Message string
	// URL is the base URL of the server that answered.
	URL string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s answered %d %s: %s", e.URL, e.Status, http.StatusText(e.Status), e.Message)
}

// retryable reports whether another server may give a better answer.
func (e *APIError) retryable() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}

// IsNotFound reports whether the server does not know the agent (404): the
// registry lost it, and the agent should register again.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// IsRevoked reports whether the server refused the agent's credentials (401
// or 403): a revoked, superseded or unknown certificate, or a refused token.
func IsRevoked(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden)
}

// IsBadRequest reports whether the server refused the request's content
// (400, 413, 422): retrying the same request will not help.
func IsBadRequest(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.Status == http.StatusBadRequest ||
		ae.Status == http.StatusRequestEntityTooLarge || ae.Status == http.StatusUnprocessableEntity)
}

// NewClient validates the configuration and builds a client.
func NewClient(cfg Config) (*Client, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("no discovery server URL given")
	}
	urls := make([]*url.URL, 0, len(cfg.URLs))
	for _, raw := range cfg.URLs {
		u, err := parseServerURL(raw)
		if err != nil {
			return nil, err
		}
		urls = append(urls, u)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultClientTimeout
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "baremetal_sd-agent"
	}
	tlsConfig := &tls.Config{
		MinVersion:           tls.VersionTLS12,
		RootCAs:              cfg.RootCAs,
		VerifyConnection:     VerifyServerRole,
		GetClientCertificate: cfg.GetClientCertificate,
		// Agents reconnect for every heartbeat (see IdleConnTimeout), and a
		// resumed session spares the server the certificate work of a full
		// handshake; sessions are kept per client certificate.
		ClientSessionCache: &certSessionCache{
			sessions: tls.NewLRUClientSessionCache(4 * len(urls)),
			current:  cfg.GetClientCertificate,
		},
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: cfg.Timeout,
		// Shorter than the heartbeat interval (a quarter of the agent TTL,
		// 75 s by default), so that an agent does not hold a connection
		// open between heartbeats: an idle mTLS connection costs the server
		// about 48 KiB, 4.7 GiB for 100,000 agents, while a resumed
		// handshake per heartbeat costs it a fraction of a millisecond of
		// CPU (BENCHMARKS.md).
		IdleConnTimeout:     30 * time.Second,
		MaxIdleConnsPerHost: 2,
		ForceAttemptHTTP2:   true,
	}
	return &Client{
		urls:      urls,
		transport: transport,
		http: &http.Client{
			Transport: transport,
			// A redirect would resend the enrollment token and the body to
			// another place; the API never redirects, so none is followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout:   cfg.Timeout,
		userAgent: cfg.UserAgent,
	}, nil
}

// parseServerURL checks one base URL.
func parseServerURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("discovery URL %q: %w", raw, err)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("discovery URL %q: scheme must be https", raw)
	case u.Host == "":
		return nil, fmt.Errorf("discovery URL %q: no host", raw)
	case u.User != nil:
		return nil, fmt.Errorf("discovery URL %q: user info is not supported", raw)
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("discovery URL %q: query and fragment are not supported", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// URL returns the base URL of the server the next request goes to first.
func (c *Client) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.urls[c.current].String()
}

// CloseIdleConnections closes kept-alive connections so that the next
// request makes a new handshake, with the current client certificate.
func (c *Client) CloseIdleConnections() {
	c.transport.CloseIdleConnections()
}

// Register enrolls the agent. token is the enrollment token; leave it empty
// to authenticate with the client certificate instead (re-registration after
// the registry lost the agent) or with an expired certificate in
// req.Certificate.
func (c *Client) Register(ctx context.Context, req *protocol.RegisterRequest, token string) (*protocol.CertificateResponse, error) {
	var resp protocol.CertificateResponse
	if err := c.do(ctx, http.MethodPost, protocol.PathRegister, req, token, &resp); err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	c.Observe(resp.TTLSeconds, resp.HeartbeatIntervalSeconds)
	return &resp, nil
}

// Heartbeat tells the registry the agent is alive. req may be nil.
func (c *Client) Heartbeat(ctx context.Context, req *protocol.HeartbeatRequest) (*protocol.HeartbeatResponse, error) {
	if req == nil {
		req = &protocol.HeartbeatRequest{}
	}
	var resp protocol.HeartbeatResponse
	if err := c.do(ctx, http.MethodPost, protocol.PathHeartbeat, req, "", &resp); err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	c.Observe(resp.TTLSeconds, resp.HeartbeatIntervalSeconds)
	return &resp, nil
}

// Renew asks for a new certificate for the key that signed req.CSR, over
// mTLS, or with the expired certificate in req.Certificate.
func (c *Client) Renew(ctx context.Context, req *protocol.RenewRequest) (*protocol.CertificateResponse, error) {
	var resp protocol.CertificateResponse
	if err := c.do(ctx, http.MethodPost, protocol.PathRenew, req, "", &resp); err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	c.Observe(resp.TTLSeconds, resp.HeartbeatIntervalSeconds)
	return &resp, nil
}

// Deregister removes the agent from the registry, over mTLS.
func (c *Client) Deregister(ctx context.Context) error {
	if err := c.do(ctx, http.MethodDelete, protocol.PathSelf, nil, "", nil); err != nil {
		return fmt.Errorf("deregister: %w", err)
	}
	return nil
}

// do sends one API request, failing over between the servers: a server that
// cannot be reached or answers 5xx, 408 or 429 is skipped for the next one.
// Each server is tried at most once per call; backing off between calls is
// the caller's business. A server that answers anything else becomes the one
// tried first next time.
func (c *Client) do(ctx context.Context, method, path string, body any, token string, out any) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	c.mu.Lock()
	start := c.current
	c.mu.Unlock()

	var errs []error
	for i := range c.urls {
		idx := (start + i) % len(c.urls)
		err := c.once(ctx, c.urls[idx], method, path, payload, token, out)
		var ae *APIError
		if err == nil || (errors.As(err, &ae) && !ae.retryable()) {
			c.mu.Lock()
			c.current = idx
			c.mu.Unlock()
			return err
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// Observe takes the TTL and heartbeat interval the servers said into the
// bound on one attempt. An agent whose heartbeat is stuck on an
// unresponsive server (frozen, or a network that holds the bytes) must
// still reach another one before its TTL runs out: the heartbeat goes out
// one interval after the last one that arrived, which leaves TTL minus an
// interval for trying every server in turn. With a fixed 30 s timeout, a
// 40 s TTL and a 10 s interval, the failover came just as the agent
// expired (RELIABILITY.md).
//
// The client observes the replies it gets itself. The agent also passes
// what it persisted from an earlier run, so that the first request after
// a restart is bounded already, and the replies of its other client (the
// anonymous one that enrolls with a token). Zero or negative values (an
// older server, nothing persisted) change nothing.
func (c *Client) Observe(ttlSeconds, intervalSeconds int) {
	if ttlSeconds <= 0 || intervalSeconds <= 0 {
		return
	}
	// A value above the cap can only come from a broken server or state
	// file. Capped, it cannot overflow a Duration (MaxInt seconds wrapped
	// to -1 s): such a TTL leaves the timeout as it is, such an interval
	// gives the least bound.
	ttl := time.Duration(min(ttlSeconds, maxObservedSeconds)) * time.Second
	interval := time.Duration(min(intervalSeconds, maxObservedSeconds)) * time.Second
	bound := max((ttl-interval)/time.Duration(len(c.urls)), minAttemptTimeout)
	c.mu.Lock()
	c.ttlBound = bound
	c.mu.Unlock()
}

// attemptTimeout bounds one request to one server: the configured timeout,
// or less where the servers' TTL demands it.
func (c *Client) attemptTimeout() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ttlBound > 0 {
		return min(c.timeout, c.ttlBound)
	}
	return c.timeout
}

// once sends a request to one server.
func (c *Client) once(ctx context.Context, base *url.URL, method, path string, payload []byte, token string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.attemptTimeout())
	defer cancel()
	target := base.JoinPath(path)
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, target.String(), body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, target.Redacted(), err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// The error names the URL already; it never contains the token.
		return err
	}
	defer resp.Body.Close()
	return readResponse(resp, base.String(), out)
}

// readResponse decodes a bounded response: the JSON body into out on 2xx, an
// *APIError otherwise.
func readResponse(resp *http.Response, server string, out any) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBody+1))
	if err != nil {
		return fmt.Errorf("%s: read response: %w", server, err)
	}
	if len(data) > MaxResponseBody {
		return fmt.Errorf("%s: response body larger than %d bytes", server, MaxResponseBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Status: resp.StatusCode, Message: errorMessage(resp.StatusCode, data), URL: server}
	}
	if out == nil {
		return nil
	}
	// Unknown fields are accepted: a newer server may add some.
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: decode response: %w", server, err)
	}
	return nil
}

// errorMessage extracts a printable error text from an error body.
func errorMessage(status int, body []byte) string {
	var er protocol.ErrorResponse
	msg := ""
	if json.Unmarshal(body, &er) == nil {
		msg = er.Error
	}
	msg = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return -1
		}
		return r
	}, msg)
	msg = strings.TrimSpace(msg)
	if len(msg) > maxErrorMessage {
		cut := maxErrorMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "..."
	}
	if msg == "" {
		msg = strings.ToLower(http.StatusText(status))
		if msg == "" {
			msg = "no error message"
		}
	}
	return msg
}

// certSessionCache keeps TLS sessions apart by the client certificate they
// were made with. A resumed session carries the client certificate of its
// original handshake, so a plain cache would go on presenting the previous
// certificate after a renewal, and a session from before enrollment would
// present none at all. Keyed by the certificate the agent would present now,
// a session is only resumed for the identity it belongs to; the server still
// refuses to resume one whose certificate expired.
type certSessionCache struct {
	sessions tls.ClientSessionCache
	// current returns the certificate the agent presents now; nil means
	// none.
	current func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
}

func (c *certSessionCache) Get(sessionKey string) (*tls.ClientSessionState, bool) {
	return c.sessions.Get(c.key(sessionKey))
}

func (c *certSessionCache) Put(sessionKey string, cs *tls.ClientSessionState) {
	c.sessions.Put(c.key(sessionKey), cs)
}

func (c *certSessionCache) key(sessionKey string) string {
	identity := "none"
	if c.current != nil {
		if cert, err := c.current(&tls.CertificateRequestInfo{}); err == nil && cert != nil && len(cert.Certificate) > 0 {
			sum := sha256.Sum256(cert.Certificate[0])
			identity = hex.EncodeToString(sum[:])
		}
	}
	return sessionKey + "\x00" + identity
}
