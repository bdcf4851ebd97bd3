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

package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// Bounds on the heartbeat interval a server may ask for.
const (
	defaultHeartbeatInterval = time.Minute
	minHeartbeatInterval     = time.Second
	maxHeartbeatInterval     = time.Hour
)

// action is what the lifecycle loop does next.
type action int

const (
	// actEnroll: no usable certificate. Prove the key with the expired
	// certificate if there is one, else enroll with the token.
	actEnroll action = iota
	// actRegister: the certificate is valid but the registration must be
	// (re)done over mTLS: the registry lost the agent, or what the agent
	// registers changed since the last run.
	actRegister
	// actRecover: the server refuses the valid certificate (revoked or
	// superseded). Try a new token if one appears, otherwise probe.
	actRecover
	actRenew
	actHeartbeat
)

func (a action) String() string {
	return [...]string{"enroll", "register", "recover", "renew", "heartbeat"}[a]
}

// lifecycle keeps the agent enrolled, registered and certified. Its run loop
// is the only writer of everything but cert, which TLS handshakes read.
type lifecycle struct {
	cfg    Config
	logger *slog.Logger
	// client authenticates with the agent's certificate; anon never sends
	// one. The server prefers a client certificate over a token, so a token
	// that re-admits a revoked agent must come without the revoked one.
	client  *client.Client
	anon    *client.Client
	metrics *collector.Agent
	key     *ecdsa.PrivateKey
	// req is what the agent registers; CSR and Certificate are filled per
	// request.
	req    protocol.RegisterRequest
	digest string
	// pinned are the certificates of --discovery.ca-file: the CAs a
	// reply's CAs must come from. Nil means the system roots.
	pinned []*x509.Certificate
	// renewNow is set when the server asks for a renewal at once.
	renewNow bool

	cert      atomic.Pointer[tls.Certificate]
	certPEM   []byte
	ready     chan struct{}
	readyOnce sync.Once
	// updates brings registrations changed by a reload (see reloader).
	updates <-chan registration

	persisted persistedState
	// receivedAt is when the current certificate came from the server; zero
	// for one loaded from disk.
	receivedAt time.Time

	state, logKey   string
	server          string // the server that answered last, for logs
	needRegister    bool
	rejected        bool
	expiredRefused  string // serial of an expired certificate the server refused
	refusedToken    [32]byte
	hasRefusedToken bool
	refusedTokenErr error
	interval        time.Duration
	nextHeartbeat   time.Time
	renewRetry      time.Time
	retryAt         time.Time
	failures        map[action]int
	// statusKey is the state last written to StatusFile.
	statusKey         string
	statusWriteFailed bool
	// timingWriteFailed is set while the servers' TTL and heartbeat
	// interval could not be written (see noteServerTiming).
	timingWriteFailed bool
	// trustHints bounds how often a verification failure is explained.
	trustHints every
	// health reports the exporters' health for heartbeats (nil: none);
	// healthRefusedUntil is set when a server refused it (see sendHeartbeat).
	health             func() []protocol.ExporterHealth
	healthRefusedUntil time.Time
}

func newLifecycle(cfg Config, key *ecdsa.PrivateKey, req protocol.RegisterRequest, metrics *collector.Agent) *lifecycle {
	l := &lifecycle{
		cfg:        cfg,
		logger:     cfg.Logger,
		metrics:    metrics,
		key:        key,
		req:        req,
		digest:     registrationDigest(&req),
		ready:      make(chan struct{}),
		interval:   defaultHeartbeatInterval,
		failures:   make(map[action]int),
		trustHints: every{interval: trustHintInterval},
	}
	return l
}

func (l *lifecycle) path(name string) string { return filepath.Join(l.cfg.StateDir, name) }

// load takes over the certificate and state a previous run left behind.
func (l *lifecycle) load() {
	p, err := loadPersisted(l.path(StateFile))
	if err != nil {
		l.logger.Warn("Ignoring unreadable agent state; the agent registers again", "err", err)
	}
	l.persisted = p
	if p.HeartbeatIntervalSeconds > 0 {
		l.interval = clampInterval(time.Duration(p.HeartbeatIntervalSeconds) * time.Second)
	}
	// Bounded from the first request on: a server frozen at the agent's
	// restart must not hold it beyond its TTL (see noteServerTiming).
	l.client.Observe(p.TTLSeconds, p.HeartbeatIntervalSeconds)
	l.anon.Observe(p.TTLSeconds, p.HeartbeatIntervalSeconds)
	cert, certPEM, err := loadCertificate(l.path(CertFile), l.key)
	if err != nil {
		// A certificate for another key is useless; enrolling replaces it.
		l.logger.Warn("Ignoring the stored certificate", "err", err)
		cert = nil
	}
	now := time.Now()
	l.needRegister = p.Registration != l.digest || p.CertSerial != serialOf(cert)
	if cert != nil {
		l.cert.Store(cert)
		l.certPEM = certPEM
		l.logger.Info("Loaded certificate", "agent_id", p.AgentID, "expires", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
		if _, err := os.Stat(l.path(CAFile)); err != nil {
			// The listener needs the CA to verify scrapers. Registering
			// again brings it; serving waits until then.
			l.logger.Warn("CA certificate missing from the state directory; registering again to get it", "err", err)
			l.needRegister = true
		} else {
			l.setCertificate(cert, certPEM)
		}
	}
	l.nextHeartbeat = now
	l.retryAt = now
	if cert != nil && now.Before(cert.Leaf.NotAfter) {
		l.metrics.SetState(stateRegistered)
		l.state = stateRegistered
	} else {
		l.metrics.SetState(stateEnrolling)
		l.state = stateEnrolling
	}
	l.statusKey = l.state + "\x00"
	l.writeStatus(l.state, "starting", nil)
}

// clientCertificate hands the current certificate to TLS handshakes with the
// discovery server. An expired certificate is not sent: the server would
// fail the handshake, and the expired-certificate paths put it in the body.
func (l *lifecycle) clientCertificate(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	c := l.cert.Load()
	if c == nil || !time.Now().Before(c.Leaf.NotAfter) {
		return &tls.Certificate{}, nil
	}
	if len(cri.AcceptableCAs) > 0 && cri.SupportsCertificate(c) != nil {
		// The server trusts another CA (a server that lost its data dir):
		// sending ours would fail the handshake; without one it can answer.
		return &tls.Certificate{}, nil
	}
	return c, nil
}

func (l *lifecycle) setCertificate(c *tls.Certificate, certPEM []byte) {
	l.cert.Store(c)
	l.certPEM = certPEM
	l.metrics.CertificateExpiry.Set(float64(c.Leaf.NotAfter.Unix()))
	l.metrics.CertificateRenewAfter.Set(float64(l.renewAt().Unix()))
	l.readyOnce.Do(func() { close(l.ready) })
}

// valid reports whether there is a certificate that has not expired.
func (l *lifecycle) valid(now time.Time) bool {
	c := l.cert.Load()
	return c != nil && now.Before(c.Leaf.NotAfter)
}

// renewAt is when the current certificate should be renewed: the server's
// renew_after, or 2/3 of the certificate's lifetime. A certificate whose
// start the server backdated (for clock skew) by more than its lifetime
// would be due at once and renewed in a loop; two thirds of the time left
// when it arrived is the earliest it is renewed.
func (l *lifecycle) renewAt() time.Time {
	c := l.cert.Load()
	if c == nil {
		return time.Time{}
	}
	leaf := c.Leaf
	if l.renewNow {
		return leaf.NotBefore
	}
	at := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
	if l.persisted.CertSerial == serialOf(c) && !l.persisted.RenewAfter.IsZero() &&
		l.persisted.RenewAfter.After(leaf.NotBefore) && l.persisted.RenewAfter.Before(leaf.NotAfter) {
		at = l.persisted.RenewAfter
	}
	if !l.receivedAt.IsZero() && l.receivedAt.Before(leaf.NotAfter) {
		floor := l.receivedAt.Add(leaf.NotAfter.Sub(l.receivedAt) * 2 / 3)
		if at.Before(floor) {
			at = floor
		}
	}
	return at
}

// next says what to do and when.
func (l *lifecycle) next(now time.Time) (action, time.Time) {
	switch {
	case !l.valid(now):
		return actEnroll, l.retryAt
	case l.rejected:
		return actRecover, l.retryAt
	case l.needRegister:
		return actRegister, l.retryAt
	}
	renew := l.renewAt()
	if l.renewRetry.After(renew) {
		renew = l.renewRetry
	}
	if !renew.After(l.nextHeartbeat) {
		return actRenew, renew
	}
	return actHeartbeat, l.nextHeartbeat
}

// run keeps the agent registered until ctx ends.
func (l *lifecycle) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case reg := <-l.updates:
			l.update(reg)
		default:
		}
		act, at := l.next(time.Now())
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case reg := <-l.updates:
				l.update(reg)
			case <-timer.C:
			}
			// Decide again: the certificate may have expired meanwhile.
			continue
		}
		if ctx.Err() != nil {
			return
		}
		switch act {
		case actEnroll:
			l.enroll(ctx)
		case actRegister:
			l.register(ctx)
		case actRecover:
			l.recover(ctx)
		case actRenew:
			l.renew(ctx)
		case actHeartbeat:
			l.heartbeat(ctx)
		}
	}
}

func (l *lifecycle) heartbeat(ctx context.Context) {
	resp, err := l.sendHeartbeat(ctx)
	if ctx.Err() != nil {
		return
	}
	l.metrics.Heartbeats.WithLabelValues(resultOf(err)).Inc()
	if err != nil {
		l.mtlsFailed(actHeartbeat, err)
		return
	}
	l.heartbeatOK(resp)
}

func (l *lifecycle) heartbeatOK(resp *protocol.HeartbeatResponse) {
	now := time.Now()
	l.metrics.LastHeartbeatSuccess.Set(float64(now.UnixNano()) / 1e9)
	if resp != nil && resp.HeartbeatIntervalSeconds > 0 {
		l.interval = clampInterval(time.Duration(resp.HeartbeatIntervalSeconds) * time.Second)
	}
	if resp != nil {
		l.noteServerTiming(resp.TTLSeconds, resp.HeartbeatIntervalSeconds)
	}
	if resp != nil && resp.RenewNow && !l.renewNow {
		l.renewNow = true
		l.logger.Info("Discovery server asks to renew the certificate now: it was issued before the server's upgrade")
	}
	l.server = l.client.URL()
	l.failures[actHeartbeat] = 0
	l.failures[actRecover] = 0
	l.nextHeartbeat = now.Add(jitter(l.interval))
	l.setState(stateRegistered, "", nil)
}

// fail records a failed attempt: the state (logged when it changes, not per
// attempt) and when to try again.
func (l *lifecycle) fail(act action, state, reason string, err error) {
	l.retry(act, err)
	l.setState(state, reason, err)
}

// retry schedules the next attempt of act with exponential backoff and full
// jitter.
func (l *lifecycle) retry(act action, err error) {
	l.failures[act]++
	n := l.failures[act]
	now := time.Now()
	switch act {
	case actHeartbeat:
		// Never wait longer than an interval: once the server is back the
		// agent should show up again before its TTL runs out.
		l.nextHeartbeat = now.Add(backoff(n, l.cfg.BackoffBase, min(l.cfg.BackoffMax, l.interval)))
	case actRenew:
		l.renewRetry = now.Add(backoff(n, l.cfg.BackoffBase, l.cfg.BackoffMax))
	default:
		l.retryAt = now.Add(backoff(n, l.cfg.BackoffBase, l.cfg.BackoffMax))
	}
	l.logger.Debug("Attempt failed", "action", act.String(), "attempt", n, "err", err)
}

// setState records the registration state and logs it once per change.
func (l *lifecycle) setState(state, reason string, err error) {
	l.state = state
	l.metrics.SetState(state)
	key := state + "\x00" + reason
	if key != l.statusKey {
		l.statusKey = key
		l.writeStatus(state, reason, err)
	}
	switch state {
	case stateRegistered:
		l.logOnce(key, slog.LevelInfo, "Agent is registered with the discovery server", "server", l.server, "agent_id", l.persisted.AgentID)
	case stateUnreachable:
		l.explainTrust(err)
		l.logOnce(key, slog.LevelWarn, "Discovery server unreachable or failing; retrying with backoff and serving with the current certificate meanwhile", "err", err)
	case stateRevoked:
		l.logOnce(key, slog.LevelError, "Discovery server refuses this agent's certificate (revoked or superseded); still serving with it until it expires. Put a new enrollment token into the token file to re-admit the agent", "token_file", l.cfg.TokenFile, "err", err)
	case stateTokenNeeded:
		l.logOnce(key, slog.LevelError, "A new enrollment token is needed: put it into the token file; the agent keeps retrying", "token_file", l.cfg.TokenFile, "err", err)
	case stateRefused:
		l.logOnce(key, slog.LevelError, "Discovery server refused the registration; check --agent.hostname, --agent.address, --agent.label and the relay config", "err", err)
	default:
		l.logOnce(key, slog.LevelWarn, "Agent state changed", "state", state, "err", err)
	}
}

// logOnce logs unless the previous logOnce had the same key: repeated
// failures of the same kind make one line, not one per attempt.
func (l *lifecycle) logOnce(key string, level slog.Level, msg string, args ...any) {
	if key == l.logKey {
		return
	}
	l.logKey = key
	l.logger.Log(context.Background(), level, msg, args...)
}

// deregister removes the agent from discovery on shutdown.
func (l *lifecycle) deregister(ctx context.Context) {
	if !l.valid(time.Now()) || l.rejected {
		l.logger.Debug("Not deregistering: no certificate the server accepts")
		return
	}
	err := l.client.Deregister(ctx)
	result := "success"
	if err != nil {
		result = "error"
		l.logger.Warn("Deregistration failed; the server expires the agent after its TTL", "err", err)
	} else {
		l.logger.Info("Deregistered from the discovery server", "agent_id", l.persisted.AgentID)
		// Register directly on the next start rather than after a 404.
		p := l.persisted
		p.Registration = ""
		if err := savePersisted(l.path(StateFile), p); err != nil {
			l.logger.Warn("Could not write the agent state", "err", err)
		}
	}
	l.metrics.Deregistrations.WithLabelValues(result).Inc()
}

// resultOf names the outcome of an API call for the metrics.
func resultOf(err error) string {
	switch {
	case err == nil:
		return "success"
	case client.IsNotFound(err):
		return "not_found"
	case client.IsRevoked(err):
		return "rejected"
	case client.IsBadRequest(err):
		return "bad_request"
	}
	return "error"
}

// messageOf is the server's error text, stable across attempts.
func messageOf(err error) string {
	var ae *client.APIError
	if errors.As(err, &ae) {
		return ae.Message
	}
	return ""
}

func serialOf(c *tls.Certificate) string {
	if c == nil || c.Leaf == nil {
		return ""
	}
	return c.Leaf.SerialNumber.Text(16)
}

// backoff is the wait before attempt n+1 after n consecutive failures:
// exponential from base, capped at max, with full jitter (uniform in
// [0, cap)), so that a fleet that lost its server does not come back in step.
func backoff(n int, base, maximum time.Duration) time.Duration {
	if maximum <= 0 {
		return 0
	}
	ceiling := min(max(base, 1), maximum)
	for i := 1; i < n && ceiling < maximum; i++ {
		ceiling = min(2*ceiling, maximum)
	}
	return rand.N(ceiling)
}

// jitter spreads heartbeats over [0.8, 1.0) of the interval: never later
// than the server asked for.
func jitter(interval time.Duration) time.Duration {
	return interval - rand.N(interval/5+1)
}

func clampInterval(d time.Duration) time.Duration {
	return min(max(d, minHeartbeatInterval), maxHeartbeatInterval)
}
