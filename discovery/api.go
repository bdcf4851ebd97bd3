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

package discovery

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// APIConfig wires the HTTP API to the registry, the CA and the tokens.
type APIConfig struct {
	Registry *Registry
	Cache    *SDCache
	Store    store.Store
	CA       *ca.Authority
	Tokens   *ca.Tokens
	// CertTTL is the lifetime of agent certificates (24h).
	CertTTL time.Duration
	// RenewGrace is how long after expiry an agent may still renew by
	// proving possession of its key (30 days).
	RenewGrace time.Duration
	// AnonymousSD lets anyone read http_sd; off unless an operator opts in.
	AnonymousSD bool
	Metrics     *collector.Server
	Logger      *slog.Logger
	Now         func() time.Time

	// Consumers, if set, records who fetches http_sd.
	Consumers *ConsumerLog

	// ReservedNames are host names and addresses no agent may register:
	// the server's own serving names. Prometheus verifies the tunnel proxy
	// with a CA file that also holds the agent CA (docs/tunnels.md), so an
	// agent certificate for one of these names could pose as the proxy.
	ReservedNames []string
}

// API serves the registration protocol, http_sd and the admin endpoints.
type API struct {
	cfg    APIConfig
	auth   *authenticator
	regLog *registrationLog
}

// NewAPI creates the API handlers.
func NewAPI(cfg APIConfig) *API {
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = 24 * time.Hour
	}
	if cfg.RenewGrace <= 0 {
		cfg.RenewGrace = 30 * 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &API{
		cfg:    cfg,
		auth:   &authenticator{ca: cfg.CA, tokens: cfg.Tokens, metrics: cfg.Metrics, now: cfg.Now},
		regLog: &registrationLog{logger: cfg.Logger, now: cfg.Now},
	}
}

// Routes adds the API's handlers to mux.
func (a *API) Routes(mux *http.ServeMux) {
	// Every handler that changes state is guarded against cross-site
	// requests; the GET handlers change nothing.
	guard := newStateChanging(a).wrap
	mux.HandleFunc("POST "+protocol.PathRegister, guard(a.counted(func(m *collector.Server) *prometheus.CounterVec { return m.Registrations }, a.logRefusals(a.register))))
	mux.HandleFunc("POST "+protocol.PathHeartbeat, guard(a.counted(func(m *collector.Server) *prometheus.CounterVec { return m.Heartbeats }, a.heartbeat)))
	mux.HandleFunc("POST "+protocol.PathRenew, guard(a.counted(func(m *collector.Server) *prometheus.CounterVec { return m.Renewals }, a.renew)))
	mux.HandleFunc("DELETE "+protocol.PathSelf, guard(a.handleDeregister))
	mux.HandleFunc("GET "+protocol.PathDiscovery, a.handleDiscovery)
	mux.HandleFunc("GET "+protocol.PathAgents, a.handleListAgents)
	mux.HandleFunc("DELETE "+protocol.PathAgents+"/{id}", guard(a.handleRevoke))
	mux.HandleFunc("POST "+protocol.PathAgents+"/{id}/maintenance", guard(a.handleMaintenance))
	mux.HandleFunc("GET "+protocol.PathCA, a.handleCA)

	// Without these, ServeMux answers unknown API paths and wrong methods
	// in plain text; API clients get JSON errors everywhere.
	for path, allow := range map[string]string{
		protocol.PathRegister:                     "POST",
		protocol.PathHeartbeat:                    "POST",
		protocol.PathRenew:                        "POST",
		protocol.PathDiscovery:                    "GET, HEAD",
		protocol.PathAgents:                       "GET",
		protocol.PathAgents + "/{id}":             "DELETE",
		protocol.PathAgents + "/{id}/maintenance": "POST",
	} {
		mux.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, "method not allowed: use "+allow)
		})
	}
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no API endpoint "+strconv.Quote(r.URL.Path))
	})
}

// writeJSON replies with a JSON body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, protocol.ErrorResponse{Error: msg})
}

// fail answers with the status of an authError or a store error.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) string {
	var ae *authError
	if errors.As(err, &ae) {
		if ae.status == http.StatusUnauthorized {
			// RFC 9110: a 401 names the scheme that would work.
			w.Header().Set("WWW-Authenticate", `Bearer realm="baremetal_sd"`)
		}
		writeError(w, ae.status, ae.msg)
		return ae.reason
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		// A full disk under the registry passes once an operator frees
		// space: the write was refused, not half done (bolt rolls the
		// transaction back), and the client's retry will succeed, so it is
		// a 503 that says why, not a 500.
		a.cfg.Logger.Error("Registry store out of disk space", "path", r.URL.Path, "err", err)
		writeError(w, http.StatusServiceUnavailable, "registry store out of disk space, retry later")
		return "no_space"
	}
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		a.cfg.Logger.Warn("Store unavailable", "path", r.URL.Path, "err", err)
		writeError(w, http.StatusServiceUnavailable, "registry store unavailable, retry later")
		return "unavailable"
	}
	a.cfg.Logger.Error("Request failed", "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
	return "error"
}

// decode reads a bounded, strict JSON body into v.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) (int, error) {
	r.Body = http.MaxBytesReader(w, r.Body, protocol.MaxRequestBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", protocol.MaxRequestBody)
		case optional && errors.Is(err, io.EOF):
			return 0, nil
		default:
			return http.StatusBadRequest, fmt.Errorf("invalid JSON body: %s", jsonErrorText(err))
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", protocol.MaxRequestBody)
		}
		return http.StatusBadRequest, errors.New("invalid JSON body: trailing data after the object")
	}
	return 0, nil
}

// jsonErrorText keeps decoder errors short; they may quote client input.
func jsonErrorText(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// counted wraps a handler that returns its result, counting the result in
// the counter vec selects.
func (a *API) counted(vec func(*collector.Server) *prometheus.CounterVec, h func(http.ResponseWriter, *http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		result := h(w, r)
		if a.cfg.Metrics != nil {
			vec(a.cfg.Metrics).WithLabelValues(result).Inc()
		}
	}
}

// register enrolls an agent. Three credentials are accepted: an enrollment
// token; the agent's still valid certificate, when the registry lost it; or a
// certificate that expired within the renewal grace window together with a
// CSR signed by the same key, when the host was off for a long time and its
// record was purged meanwhile.
func (a *API) register(w http.ResponseWriter, r *http.Request) string {
	var (
		who *identity
		err error
	)
	cert, err := a.auth.certificate(r)
	if err != nil {
		return a.fail(w, r, err)
	}
	if cert != nil {
		who, err = a.auth.agent(r)
	} else if _, ok := bearer(r); ok {
		who, err = a.auth.token(r, ca.ScopeEnroll)
	}
	if err != nil {
		return a.fail(w, r, err)
	}
	if who == nil && !hasBody(r) {
		return a.fail(w, r, a.auth.rejectToken("missing", "a bearer token is required"))
	}

	var req protocol.RegisterRequest
	if status, err := decode(w, r, &req, false); err != nil {
		writeError(w, status, err.Error())
		return "bad_request"
	}
	if who == nil && req.Certificate == "" {
		return a.fail(w, r, a.auth.rejectToken("missing", "a bearer token is required"))
	}
	if req.Address == "" {
		req.Address = sourceIP(r)
	}
	if err := protocol.ValidateRegistration(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "bad_request"
	}
	for _, name := range a.cfg.ReservedNames {
		if strings.EqualFold(req.Hostname, name) || strings.EqualFold(req.Address, name) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is a name of the discovery server itself: register the host under another name (--agent.hostname, --agent.address)", name))
			return "reserved_name"
		}
	}
	csr, err := ca.ParseCSR([]byte(req.CSR))
	if err != nil {
		writeError(w, http.StatusBadRequest, "csr: "+err.Error())
		return "bad_request"
	}
	if who == nil {
		if who, err = a.expiredIdentity(req.Certificate, csr); err != nil {
			return a.fail(w, r, err)
		}
	}

	now := a.cfg.Now()
	agent := &store.Agent{
		Hostname:     req.Hostname,
		Address:      req.Address,
		Port:         req.Port,
		Labels:       labels.FromMap(req.Labels),
		Exporters:    req.Exporters,
		Tunnel:       req.Tunnel,
		RegisteredAt: now,
		LastSeen:     now,
	}
	var claim *store.TokenClaim
	if who.claims != nil {
		agent.ID = who.claims.AgentID
		if err := pinLabels(agent, labels.FromMap(who.claims.Labels)); err != nil {
			return a.fail(w, r, err)
		}
		if who.claims.SingleUse {
			claim = &store.TokenClaim{ID: who.claims.ID, Expires: now.Add(time.Hour)}
			if who.claims.ExpiresAt != nil {
				claim.Expires = who.claims.ExpiresAt.Time
			}
		}
	} else {
		// Re-registration by certificate: only for the certificate's own id
		// and hostname, or a host could use its certificate to pose as
		// another; renaming a host takes a new token. Whether the
		// certificate is still the agent's is decided on the stored record
		// below.
		agent.ID = who.id
		if who.hostname != "" && agent.Hostname != who.hostname {
			return a.fail(w, r, a.auth.reject(&authError{http.StatusForbidden, "hostname_mismatch",
				fmt.Sprintf("hostname %q differs from the certificate's %q: enroll with a new token to rename a host", agent.Hostname, who.hostname)}))
		}
	}
	if agent.ID == "" {
		agent.ID = strings.ToLower(rand.Text())
	}

	// Everything that can refuse the request without the stored record has
	// been checked, and the certificate is signed, before the one write that
	// stores the registration and, with a single-use token, uses the token
	// up: a registration that fails leaves the token usable for the retry.
	signed, err := a.sign(agent, csr.PublicKey)
	if err != nil {
		return a.fail(w, r, err)
	}
	_, err = a.cfg.Registry.Modify(r.Context(), agent.ID, claim, func(cur *store.Agent) (*store.Agent, error) {
		next := agent.Clone()
		if cur == nil {
			return next, nil
		}
		if who.claims != nil {
			// A token made after the revocation re-admits the agent; an older
			// one must not undo the operator's decision.
			if cur.Revoked() && (who.claims.IssuedAt == nil || !who.claims.IssuedAt.After(cur.RevokedAt)) {
				return nil, errTokenBeforeRevocation
			}
		} else {
			if err := checkSerial(cur, who.serial, now); err != nil {
				return nil, err
			}
			// The labels the enrollment token pinned stay, or a host could
			// leave the group its token put it in.
			if err := pinLabels(next, cur.PinnedLabels); err != nil {
				return nil, err
			}
		}
		next.RegisteredAt = cur.RegisteredAt
		next.Maintenance = cur.Maintenance
		return next, nil
	})
	switch {
	case errors.Is(err, store.ErrTokenUsed):
		return a.fail(w, r, a.auth.rejectToken("reused", "token refused: single-use token was already used"))
	case errors.Is(err, errTokenBeforeRevocation):
		return a.fail(w, r, a.auth.rejectToken("revoked", "token refused: the agent was revoked after this token was issued"))
	case errors.Is(err, ErrRevoked), errors.Is(err, ErrSuperseded):
		return a.certStateError(w, r, err)
	case err != nil:
		return a.fail(w, r, err)
	}
	a.issued("register")
	if who.claims != nil {
		a.regLog.log(slog.LevelInfo, "Agent enrolled", "agent_id", agent.ID, "hostname", agent.Hostname,
			"remote_addr", sourceIP(r), "token_id", who.claims.ID)
	} else {
		a.cfg.Logger.Debug("Agent registered", "agent_id", agent.ID, "hostname", agent.Hostname)
	}
	writeJSON(w, http.StatusOK, a.certificateResponse(agent.ID, signed.leaf, signed.chain))
	return "success"
}

// errTokenBeforeRevocation refuses an enrollment token issued before the
// agent it names was revoked.
var errTokenBeforeRevocation = errors.New("token issued before the agent was revoked")

// pinLabels sets the labels an enrollment token fixed, refusing a request
// that asks for other values, and records them so that later
// re-registrations by certificate keep them.
func pinLabels(agent *store.Agent, pinned labels.Labels) error {
	if pinned.IsEmpty() {
		return nil
	}
	var err error
	pinned.Range(func(l labels.Label) {
		if err == nil && agent.Labels.Has(l.Name) && agent.Labels.Get(l.Name) != l.Value {
			err = &authError{http.StatusForbidden, "label_constraint",
				fmt.Sprintf("label %q must be %q for this agent's enrollment token", l.Name, l.Value)}
		}
	})
	if err != nil {
		return err
	}
	// Not labels.Builder: it drops labels with empty values, which agents
	// may register.
	merged := agent.Labels.Map()
	pinned.Range(func(l labels.Label) { merged[l.Name] = l.Value })
	agent.Labels = labels.FromMap(merged)
	agent.PinnedLabels = pinned
	return nil
}

// signedCert is a certificate signed for an agent, not yet stored.
type signedCert struct {
	leaf  *x509.Certificate
	chain []byte
}

// sign signs a certificate for the agent's id, hostname and address and
// records it in agent (serial, expiry, key fingerprint). Signing comes
// before the store write, which may have to be repeated, and costs nothing
// but CPU if the write then refuses.
func (a *API) sign(agent *store.Agent, pub any) (*signedCert, error) {
	fp, err := ca.KeyFingerprint(pub)
	if err != nil {
		return nil, &authError{http.StatusBadRequest, "bad_key", "csr: " + err.Error()}
	}
	leaf, chain, err := a.cfg.CA.SignAgent(ca.AgentCertRequest{
		AgentID:   agent.ID,
		Hostname:  agent.Hostname,
		Address:   agent.Address,
		PublicKey: pub,
		TTL:       a.cfg.CertTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %q: %w", agent.ID, err)
	}
	agent.CertSerial = serialHex(leaf)
	agent.CertNotAfter = leaf.NotAfter
	agent.KeyFingerprint = fp
	agent.RevokedAt = time.Time{}
	return &signedCert{leaf: leaf, chain: chain}, nil
}

// issued counts a certificate handed out.
func (a *API) issued(reason string) {
	if a.cfg.Metrics != nil {
		a.cfg.Metrics.CertificatesIssued.WithLabelValues(reason).Inc()
	}
}

func (a *API) certificateResponse(id string, leaf *x509.Certificate, chain []byte) *protocol.CertificateResponse {
	cfg := a.cfg.Registry.Config()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return &protocol.CertificateResponse{
		AgentID:                  id,
		Certificate:              string(chain),
		CACertificate:            string(legacyCABundle(a.cfg.CA)),
		AgentCACertificate:       string(a.cfg.CA.AgentCACertificatePEM()),
		ClientCACertificate:      string(a.cfg.CA.ClientCACertificatePEM()),
		TTLSeconds:               int(cfg.TTL / time.Second),
		HeartbeatIntervalSeconds: int(cfg.HeartbeatInterval / time.Second),
		RenewAfter:               leaf.NotBefore.Add(life * 2 / 3).UTC(),
	}
}

// legacyCABundle is the ca_certificate of a certificate response. Agents
// of 0.1.0 verify their new certificate against it and make it their
// relay's client CA, so it holds the client CA and the agent CA; the
// relay's role check still refuses agent certificates.
func legacyCABundle(authority *ca.Authority) []byte {
	return append(append([]byte(nil), authority.ClientCACertificatePEM()...), authority.AgentCACertificatePEM()...)
}

// hasBody reports whether a request may carry a body worth decoding.
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}

// sourceIP is the address the request came from, used when an agent does
// not say where it can be scraped.
func sourceIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (a *API) heartbeat(w http.ResponseWriter, r *http.Request) string {
	who, err := a.auth.agent(r)
	if err != nil {
		return a.fail(w, r, err)
	}
	var req protocol.HeartbeatRequest
	if status, err := decode(w, r, &req, true); err != nil {
		writeError(w, status, err.Error())
		return "bad_request"
	}
	if len(req.Status) > protocol.MaxStatusLen {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("status is longer than %d bytes", protocol.MaxStatusLen))
		return "bad_request"
	}
	if err := a.cfg.Registry.Heartbeat(who.id, who.serial, req.Status); err != nil {
		return a.certStateError(w, r, err)
	}
	cfg := a.cfg.Registry.Config()
	writeJSON(w, http.StatusOK, protocol.HeartbeatResponse{
		TTLSeconds:               int(cfg.TTL / time.Second),
		HeartbeatIntervalSeconds: int(cfg.HeartbeatInterval / time.Second),
		RenewNow:                 who.legacy,
	})
	return "success"
}

// certStateError answers a registry refusal of an agent certificate.
func (a *API) certStateError(w http.ResponseWriter, r *http.Request, err error) string {
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, ErrDeregistered):
		writeError(w, http.StatusNotFound, "agent not registered: register again")
		return "not_found"
	case errors.Is(err, ErrRevoked):
		return a.fail(w, r, a.auth.reject(&authError{http.StatusForbidden, "revoked", "agent is revoked"}))
	case errors.Is(err, ErrSuperseded):
		return a.fail(w, r, a.auth.reject(&authError{http.StatusForbidden, "superseded", "certificate is superseded by a newer enrollment"}))
	}
	return a.fail(w, r, err)
}

// renew signs a new certificate for an agent. Over mTLS the current
// certificate authenticates it; a host whose certificate expired while it was
// off sends that certificate and a CSR signed by the same key instead.
func (a *API) renew(w http.ResponseWriter, r *http.Request) string {
	cert, err := a.auth.certificate(r)
	if err != nil {
		return a.fail(w, r, err)
	}
	var req protocol.RenewRequest
	if status, err := decode(w, r, &req, false); err != nil {
		writeError(w, status, err.Error())
		return "bad_request"
	}
	csr, err := ca.ParseCSR([]byte(req.CSR))
	if err != nil {
		writeError(w, http.StatusBadRequest, "csr: "+err.Error())
		return "bad_request"
	}
	var who *identity
	if cert != nil {
		if who, err = a.auth.agent(r); err != nil {
			return a.fail(w, r, err)
		}
	} else {
		if who, err = a.expiredIdentity(req.Certificate, csr); err != nil {
			return a.fail(w, r, err)
		}
	}
	// Memory answers the common refusals cheaply; the stored record has the
	// final word below.
	if err := a.cfg.Registry.CheckCertificate(who.id, who.serial); err != nil {
		return a.certStateError(w, r, err)
	}
	fp, err := ca.KeyFingerprint(csr.PublicKey)
	if err != nil {
		return a.fail(w, r, &authError{http.StatusBadRequest, "bad_key", "csr: " + err.Error()})
	}
	now := a.cfg.Now()
	view, _ := a.cfg.Registry.Get(who.id)
	signFor := view.Clone()
	// The certificate names the hostname and address of the record; the
	// rare re-registration that changes them between the read and the write
	// makes us sign again.
	for attempt := 1; ; attempt++ {
		template := &store.Agent{ID: who.id, Hostname: signFor.Hostname, Address: signFor.Address}
		signed, err := a.sign(template, csr.PublicKey)
		if err != nil {
			return a.fail(w, r, err)
		}
		_, err = a.cfg.Registry.Modify(r.Context(), who.id, nil, func(cur *store.Agent) (*store.Agent, error) {
			if cur == nil {
				return nil, store.ErrNotFound
			}
			if err := checkActive(cur, who.serial, now); err != nil {
				return nil, err
			}
			if cert == nil && cur.KeyFingerprint != "" && fp != cur.KeyFingerprint {
				return nil, errKeyMismatch
			}
			if cur.Hostname != template.Hostname || cur.Address != template.Address {
				return nil, &recordChanged{cur: cur.Clone()}
			}
			next := cur.Clone()
			next.PrevCertSerial, next.PrevCertNotAfter = cur.CertSerial, cur.CertNotAfter
			next.CertSerial, next.CertNotAfter, next.KeyFingerprint = template.CertSerial, template.CertNotAfter, template.KeyFingerprint
			return next, nil
		})
		var changed *recordChanged
		switch {
		case errors.As(err, &changed) && attempt < 3:
			signFor = changed.cur
			continue
		case errors.Is(err, errKeyMismatch):
			return a.fail(w, r, a.auth.reject(&authError{http.StatusForbidden, "key_mismatch", "csr key is not the key the agent enrolled with"}))
		case errors.Is(err, store.ErrNotFound), errors.Is(err, ErrRevoked), errors.Is(err, ErrSuperseded), errors.Is(err, ErrDeregistered):
			return a.certStateError(w, r, err)
		case err != nil:
			return a.fail(w, r, err)
		}
		a.issued("renew")
		writeJSON(w, http.StatusOK, a.certificateResponse(who.id, signed.leaf, signed.chain))
		return "success"
	}
}

// errKeyMismatch refuses a renewal by proof of possession with another key
// than the one the agent enrolled with.
var errKeyMismatch = errors.New("csr key is not the key the agent enrolled with")

// recordChanged says that a record changed in a way that needs a new
// certificate; cur is the record as stored now.
type recordChanged struct{ cur *store.Agent }

func (e *recordChanged) Error() string { return "agent record changed during the renewal" }

// expiredIdentity authenticates a renewal without mTLS: the old certificate
// must be ours, an agent's, expired no longer than the grace window, and the
// CSR must be signed by the key it certifies.
func (a *API) expiredIdentity(certPEM string, csr *x509.CertificateRequest) (*identity, error) {
	if certPEM == "" {
		return nil, a.auth.reject(&authError{http.StatusUnauthorized, "no_certificate", "a client certificate is required, or the expired certificate in the body"})
	}
	old, err := ca.ParseCertificatePEM([]byte(certPEM))
	if err != nil {
		return nil, &authError{http.StatusBadRequest, "bad_certificate", "certificate: " + err.Error()}
	}
	client, err := a.cfg.CA.VerifyIgnoringExpiry(old)
	if err != nil {
		return nil, a.auth.reject(&authError{http.StatusUnauthorized, "bad_certificate", "certificate not issued to an agent by this CA"})
	}
	now := a.cfg.Now()
	if now.Before(old.NotAfter) {
		return nil, a.auth.reject(&authError{http.StatusBadRequest, "not_expired", "certificate is still valid: renew over mTLS"})
	}
	if now.Sub(old.NotAfter) > a.cfg.RenewGrace {
		return nil, a.auth.reject(&authError{http.StatusUnauthorized, "grace_expired",
			fmt.Sprintf("certificate expired more than %s ago: enroll again with a new token", a.cfg.RenewGrace)})
	}
	oldFP, err := ca.KeyFingerprint(old.PublicKey)
	if err != nil {
		return nil, &authError{http.StatusBadRequest, "bad_certificate", "certificate: " + err.Error()}
	}
	if fp, _ := ca.KeyFingerprint(csr.PublicKey); fp != oldFP {
		return nil, a.auth.reject(&authError{http.StatusForbidden, "key_mismatch", "csr is not signed by the certificate's key"})
	}
	return &identity{role: ca.RoleAgent, id: client.ID, serial: serialHex(old), hostname: certHostname(old)}, nil
}

func (a *API) handleDeregister(w http.ResponseWriter, r *http.Request) {
	who, err := a.auth.agent(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.cfg.Registry.Deregister(r.Context(), who.id, who.serial); err != nil {
		a.certStateError(w, r, err)
		return
	}
	a.cfg.Logger.Info("Agent deregistered", "agent_id", who.id)
	w.WriteHeader(http.StatusNoContent)
}
