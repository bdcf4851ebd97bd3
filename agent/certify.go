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
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
)

// request builds a registration with a fresh CSR.
func (l *lifecycle) request(expired []byte) (*protocol.RegisterRequest, error) {
	req := l.req
	csr, err := newCSR(l.key, req.Hostname)
	if err != nil {
		return nil, err
	}
	req.CSR = csr
	req.Certificate = string(expired)
	return &req, nil
}

// requestOrRetry builds a registration with a fresh CSR; when it cannot, it
// schedules act again and says why once.
func (l *lifecycle) requestOrRetry(act action) (*protocol.RegisterRequest, bool) {
	req, err := l.request(nil)
	if err != nil {
		l.retry(act, err)
		l.logOnce("csr", slog.LevelError, "Could not create a certificate request", "err", err)
		return nil, false
	}
	return req, true
}

// enroll gets a certificate when there is no valid one: by proving the key
// with the expired certificate (a host that was off for longer than its
// certificate lived), or with the enrollment token.
func (l *lifecycle) enroll(ctx context.Context) {
	if c := l.cert.Load(); c != nil && l.expiredRefused != serialOf(c) {
		resp, err := l.withExpiredCertificate(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			l.apply(actEnroll, resp, l.anon, "Renewed the expired certificate")
			return
		case client.IsRevoked(err):
			// Past the grace window, revoked, or unknown to the server:
			// only a token helps now.
			l.expiredRefused = serialOf(c)
			l.logger.Warn("Discovery server refused the expired certificate; enrolling with a token", "err", err)
		case client.IsBadRequest(err):
			// The server could not use the request: its clock has not
			// reached the expiry the agent's clock passed (not_expired),
			// which settles itself, or it refuses what the agent
			// registers, which a token would not change. Retry.
			l.fail(actEnroll, stateRefused, "refused: "+messageOf(err),
				fmt.Errorf("with the expired certificate: %w (a server whose clock is behind this host's accepts it once its clock passes the expiry)", err))
			return
		default:
			l.fail(actEnroll, stateUnreachable, "unreachable", err)
			return
		}
	}

	tok, err := readToken(l.cfg.TokenFile)
	switch {
	case err != nil:
		l.fail(actEnroll, stateTokenNeeded, "token file unreadable", err)
		return
	case tok == "":
		l.fail(actEnroll, stateTokenNeeded, "no token",
			fmt.Errorf("no valid certificate and no enrollment token in %q", l.cfg.TokenFile))
		return
	case l.tokenRefused(tok):
		l.fail(actEnroll, stateTokenNeeded, "token refused", l.refusedTokenErr)
		return
	}
	l.enrollWithToken(ctx, actEnroll, tok)
}

// tokenRefused reports whether tok is the token the server last refused.
func (l *lifecycle) tokenRefused(tok string) bool {
	return l.hasRefusedToken && tokenDigest(tok) == l.refusedToken
}

// withExpiredCertificate renews an expired certificate, or registers with it
// when the registry forgot the agent or the registration changed.
func (l *lifecycle) withExpiredCertificate(ctx context.Context) (*protocol.CertificateResponse, error) {
	req, err := l.request(l.certPEM)
	if err != nil {
		return nil, err
	}
	if !l.needRegister {
		resp, err := l.anon.Renew(ctx, &protocol.RenewRequest{CSR: req.CSR, Certificate: req.Certificate})
		l.metrics.Renewals.WithLabelValues(resultOf(err)).Inc()
		if !client.IsNotFound(err) {
			return resp, err
		}
		l.logger.Info("Registry lost this agent; registering again with the expired certificate")
	}
	resp, err := l.anon.Register(ctx, req, "")
	l.metrics.Registrations.WithLabelValues(resultOf(err)).Inc()
	return resp, err
}

// enrollWithToken registers with an enrollment token.
func (l *lifecycle) enrollWithToken(ctx context.Context, act action, tok string) {
	req, ok := l.requestOrRetry(act)
	if !ok {
		return
	}
	resp, err := l.anon.Register(ctx, req, tok)
	if ctx.Err() != nil {
		return
	}
	l.metrics.Registrations.WithLabelValues(resultOf(err)).Inc()
	switch {
	case err == nil:
		l.hasRefusedToken = false
		l.apply(act, resp, l.anon, "Enrolled with the enrollment token")
	case client.IsRevoked(err):
		// The same token will be refused again; wait for a new one.
		l.refusedToken, l.hasRefusedToken, l.refusedTokenErr = tokenDigest(tok), true, err
		if act == actRecover {
			l.fail(act, stateRevoked, "revoked", err)
			return
		}
		l.fail(act, stateTokenNeeded, "token refused", err)
	case client.IsBadRequest(err):
		l.fail(act, stateRefused, "refused: "+messageOf(err), err)
	default:
		l.fail(act, stateUnreachable, "unreachable", err)
	}
}

// register re-registers over mTLS with the valid certificate.
func (l *lifecycle) register(ctx context.Context) {
	req, ok := l.requestOrRetry(actRegister)
	if !ok {
		return
	}
	resp, err := l.client.Register(ctx, req, "")
	if ctx.Err() != nil {
		return
	}
	l.metrics.Registrations.WithLabelValues(resultOf(err)).Inc()
	switch {
	case err == nil:
		l.apply(actRegister, resp, l.client, "Registered with the discovery server")
	case client.IsRevoked(err) && l.expiredMeanwhile():
	case client.IsRevoked(err):
		l.revoked(err)
	case client.IsBadRequest(err):
		l.fail(actRegister, stateRefused, "refused: "+messageOf(err), err)
	default:
		l.fail(actRegister, stateUnreachable, "unreachable", err)
	}
}

// expiredMeanwhile reports whether the certificate a refused mTLS request
// was sent with has expired since, and if so makes the agent enroll with
// the expired certificate next. A request held up by a slow or stalled
// network can reach the server after the certificate's expiry; the server
// then sees no valid client certificate (401), which says nothing about a
// revocation. Found by the chaos harness: the agent reported itself
// revoked and asked for a new token, then renewed a second later.
func (l *lifecycle) expiredMeanwhile() bool {
	if l.valid(time.Now()) {
		return false
	}
	l.retryAt = time.Now()
	return true
}

// revoked handles the server refusing the valid certificate. The token in
// the token file at this moment is taken as used up: a reusable token left
// there since enrollment must not undo an operator's revocation by itself.
// Only a token that appears later re-admits the agent.
func (l *lifecycle) revoked(err error) {
	l.rejected = true
	if tok, _ := readToken(l.cfg.TokenFile); tok != "" {
		l.refusedToken, l.hasRefusedToken, l.refusedTokenErr = tokenDigest(tok), true, err
	}
	l.fail(actRecover, stateRevoked, "revoked", err)
}

// recover runs while the server refuses the certificate: a new token in the
// token file re-admits the agent; otherwise a heartbeat probes whether the
// refusal still holds.
func (l *lifecycle) recover(ctx context.Context) {
	tok, _ := readToken(l.cfg.TokenFile)
	if tok != "" && !l.tokenRefused(tok) {
		l.enrollWithToken(ctx, actRecover, tok)
		return
	}
	_, err := l.client.Heartbeat(ctx, nil)
	if ctx.Err() != nil {
		return
	}
	l.metrics.Heartbeats.WithLabelValues(resultOf(err)).Inc()
	switch {
	case err == nil:
		l.rejected = false
		l.heartbeatOK(nil)
	case client.IsNotFound(err):
		l.rejected = false
		l.needRegister = true
		l.retryAt = time.Now()
	case client.IsRevoked(err):
		l.fail(actRecover, stateRevoked, "revoked", err)
	default:
		l.fail(actRecover, stateUnreachable, "unreachable", err)
	}
}

// renew gets a new certificate for the same key over mTLS.
func (l *lifecycle) renew(ctx context.Context) {
	req, ok := l.requestOrRetry(actRenew)
	if !ok {
		return
	}
	resp, err := l.client.Renew(ctx, &protocol.RenewRequest{CSR: req.CSR})
	if ctx.Err() != nil {
		return
	}
	l.metrics.Renewals.WithLabelValues(resultOf(err)).Inc()
	if err != nil {
		// A registry that lost the agent makes it register again, which
		// issues a new certificate as well.
		l.mtlsFailed(actRenew, err)
		return
	}
	l.apply(actRenew, resp, l.client, "Renewed the certificate")
}

// mtlsFailed handles the error of a renewal or heartbeat, both sent with the
// agent's certificate: a registry that lost the agent gets a new
// registration, a refusal of a certificate that expired meanwhile is no
// revocation (see expiredMeanwhile), any other error leaves the server
// unreachable for this attempt.
func (l *lifecycle) mtlsFailed(act action, err error) {
	switch {
	case client.IsNotFound(err):
		l.logger.Warn("Registry lost this agent; registering again")
		l.needRegister = true
		l.retryAt = time.Now()
	case client.IsRevoked(err) && l.expiredMeanwhile():
	case client.IsRevoked(err):
		l.revoked(err)
	default:
		l.fail(act, stateUnreachable, "unreachable", err)
	}
}

// apply takes a certificate from the server into use: files first, then
// memory, so that the listener and the client switch together.
func (l *lifecycle) apply(act action, resp *protocol.CertificateResponse, from *client.Client, what string) {
	c, clientCA, err := l.checkResponse(resp)
	if err != nil {
		l.retry(act, err)
		l.logOnce("bad response", slog.LevelError, "Discovery server sent an unusable certificate", "err", err)
		return
	}
	now := time.Now()
	ttl, interval := l.serverTiming(resp.TTLSeconds, resp.HeartbeatIntervalSeconds)
	p := persistedState{
		AgentID:                  resp.AgentID,
		Registration:             l.digest,
		CertSerial:               serialOf(c),
		RenewAfter:               resp.RenewAfter,
		TTLSeconds:               ttl,
		HeartbeatIntervalSeconds: interval,
		UpdatedAt:                now.UTC(),
	}
	if err := l.writeFiles(resp, clientCA, p); err != nil {
		l.retry(act, err)
		l.logOnce("write", slog.LevelError, "Could not write the new certificate to the state directory", "err", err)
		return
	}
	l.persisted = p
	l.timingWriteFailed = false
	l.receivedAt = now
	l.setCertificate(c, []byte(resp.Certificate))
	// The reply came to one of the two clients; the other, the heartbeat
	// client after an enrollment with a token, is bounded by it as well.
	l.client.Observe(ttl, interval)
	l.anon.Observe(ttl, interval)
	// Connections to the server made with the old certificate would keep
	// speaking for it; the next request makes a new handshake.
	l.client.CloseIdleConnections()

	if resp.HeartbeatIntervalSeconds > 0 {
		l.interval = clampInterval(time.Duration(resp.HeartbeatIntervalSeconds) * time.Second)
	}
	// The registration or renewal counts as a heartbeat.
	l.metrics.LastHeartbeatSuccess.Set(float64(now.UnixNano()) / 1e9)
	l.nextHeartbeat = now.Add(jitter(l.interval))
	l.needRegister, l.rejected, l.expiredRefused = false, false, ""
	l.renewRetry = time.Time{}
	l.renewNow = false
	clear(l.failures)
	l.server = from.URL()
	l.logger.Info(what, "agent_id", resp.AgentID, "server", l.server,
		"expires", c.Leaf.NotAfter.UTC().Format(time.RFC3339), "renew_after", l.renewAt().UTC().Format(time.RFC3339))
	l.setState(stateRegistered, "", nil)
}

// checkResponse verifies a certificate response: the leaf certifies our key
// and chains to the agent CA the server sent, which the pinned CA vouches
// for. It returns the certificate and the relay's client CA.
func (l *lifecycle) checkResponse(resp *protocol.CertificateResponse) (*tls.Certificate, []byte, error) {
	chain, err := parseChain([]byte(resp.Certificate))
	if err != nil {
		return nil, nil, err
	}
	c, err := keyPair(chain, l.key)
	if err != nil {
		return nil, nil, err
	}
	cas, err := checkReplyCAs(resp, l.pinned)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	for _, r := range cas.agent {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, i := range chain[1:] {
		inter.AddCert(i)
	}
	leaf := chain[0]
	// Checked at the certificate's own start, so that clock skew between
	// agent and server does not reject a fresh certificate.
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   leaf.NotBefore.Add(time.Second),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, nil, fmt.Errorf("does not chain to the CA in the response: %w", err)
	}
	return c, cas.clientPEM, nil
}

// writeFiles writes the CA, the certificate and the state, each atomically.
// The key never changes, so the listener, which reads certificate and key on
// a handshake, always sees a matching pair: the old certificate or the new.
func (l *lifecycle) writeFiles(resp *protocol.CertificateResponse, clientCA []byte, p persistedState) error {
	if err := fileutil.WriteAtomic(l.path(CAFile), clientCA, 0o644); err != nil {
		return fmt.Errorf("write CA certificate: %w", err)
	}
	if err := fileutil.WriteAtomic(l.path(CertFile), []byte(resp.Certificate), 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	if err := savePersisted(l.path(StateFile), p); err != nil {
		return fmt.Errorf("write agent state: %w", err)
	}
	return nil
}
