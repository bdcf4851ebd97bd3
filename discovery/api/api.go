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

package api

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Config wires the HTTP API to the registry, the CA and the tokens.
type Config struct {
	Registry *registry.Registry
	Cache    *httpsd.Cache
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
	Consumers *httpsd.ConsumerLog

	// ReservedNames are host names and addresses no agent may register:
	// the server's own serving names. Prometheus verifies the tunnel proxy
	// with a CA file that also holds the agent CA (docs/tunnels.md), so an
	// agent certificate for one of these names could pose as the proxy.
	ReservedNames []string
}

// API serves the registration protocol, http_sd and the admin endpoints.
// Each handler decodes the request, makes one registry call and encodes
// the answer; errors become statuses through one table (errors.go).
type API struct {
	cfg    Config
	auth   *authenticator
	regLog *registrationLog
}

// New creates the API handlers.
func New(cfg Config) *API {
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
	registrations := func(m *collector.Server) *prometheus.CounterVec { return m.Registrations }
	heartbeats := func(m *collector.Server) *prometheus.CounterVec { return m.Heartbeats }
	renewals := func(m *collector.Server) *prometheus.CounterVec { return m.Renewals }
	mux.HandleFunc("POST "+protocol.PathRegister, guard(a.handle(registrations, true, a.register)))
	mux.HandleFunc("POST "+protocol.PathHeartbeat, guard(a.handle(heartbeats, false, a.heartbeat)))
	mux.HandleFunc("POST "+protocol.PathRenew, guard(a.handle(renewals, false, a.renew)))
	mux.HandleFunc("DELETE "+protocol.PathSelf, guard(a.handle(nil, false, a.deregister)))
	mux.HandleFunc("GET "+protocol.PathDiscovery, a.handleDiscovery)
	mux.HandleFunc("GET "+protocol.PathAgents, a.handle(nil, false, a.listAgents))
	mux.HandleFunc("DELETE "+protocol.PathAgents+"/{id}", guard(a.handle(nil, false, a.revoke)))
	mux.HandleFunc("POST "+protocol.PathAgents+"/{id}/maintenance", guard(a.handle(nil, false, a.maintenance)))
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

// handle adapts a handler that answers success itself and returns its
// error: the error is answered through the error table, the result
// ("success" or the table's reason) is counted in the counter vec selects,
// if any, and with logRefused a refusal (4xx) goes to the registration log.
func (a *API) handle(vec func(*collector.Server) *prometheus.CounterVec, logRefused bool, h func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		result := "success"
		if err := h(w, r); err != nil {
			var status int
			status, result = a.fail(w, r, err)
			if logRefused && status >= 400 && status < 500 {
				a.regLog.log(slog.LevelWarn, "Registration refused", "remote_addr", sourceIP(r), "reason", result, "status", status)
			}
		}
		if vec != nil && a.cfg.Metrics != nil {
			vec(a.cfg.Metrics).WithLabelValues(result).Inc()
		}
	}
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

// decode reads a bounded, strict JSON body into v. Its errors are
// *apiErrors: 413 for a body over the limit, 400 otherwise.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	r.Body = http.MaxBytesReader(w, r.Body, protocol.MaxRequestBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	tooLarge := &apiError{http.StatusRequestEntityTooLarge, "bad_request", fmt.Sprintf("request body larger than %d bytes", protocol.MaxRequestBody)}
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return tooLarge
		case optional && errors.Is(err, io.EOF):
			return nil
		default:
			return badRequest("invalid JSON body: " + jsonErrorText(err))
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge
		}
		return badRequest("invalid JSON body: trailing data after the object")
	}
	return nil
}

// jsonErrorText keeps decoder errors short; they may quote client input.
func jsonErrorText(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// register enrolls an agent. Three credentials are accepted: an enrollment
// token; the agent's still valid certificate, when the registry lost it; or a
// certificate that expired within the renewal grace window together with a
// CSR signed by the same key, when the host was off for a long time and its
// record was purged meanwhile.
func (a *API) register(w http.ResponseWriter, r *http.Request) error {
	var who *identity
	cert, err := a.auth.certificate(r)
	if err != nil {
		return err
	}
	if cert != nil {
		who, err = a.auth.agent(r)
	} else if _, ok := bearer(r); ok {
		who, err = a.auth.token(r, ca.ScopeEnroll)
	}
	if err != nil {
		return err
	}
	if who == nil && !hasBody(r) {
		return a.auth.rejectToken("missing", "a bearer token is required")
	}

	var req protocol.RegisterRequest
	if err := decode(w, r, &req, false); err != nil {
		return err
	}
	if who == nil && req.Certificate == "" {
		return a.auth.rejectToken("missing", "a bearer token is required")
	}
	if req.Address == "" {
		req.Address = sourceIP(r)
	}
	if err := protocol.ValidateRegistration(&req); err != nil {
		return badRequest(err.Error())
	}
	for _, name := range a.cfg.ReservedNames {
		if strings.EqualFold(req.Hostname, name) || strings.EqualFold(req.Address, name) {
			return &apiError{http.StatusBadRequest, "reserved_name", fmt.Sprintf("%q is a name of the discovery server itself: register the host under another name (--agent.hostname, --agent.address)", name)}
		}
	}
	csr, err := ca.ParseCSR([]byte(req.CSR))
	if err != nil {
		return badRequest("csr: " + err.Error())
	}
	if who == nil {
		if who, err = a.expiredIdentity(req.Certificate, csr); err != nil {
			return err
		}
	}

	now := a.cfg.Now()
	reg := registry.Registration{Agent: &store.Agent{
		Hostname:     req.Hostname,
		Address:      req.Address,
		Port:         req.Port,
		Labels:       labels.FromMap(req.Labels),
		Exporters:    req.Exporters,
		Tunnel:       req.Tunnel,
		RegisteredAt: now,
		LastSeen:     now,
	}}
	agent := reg.Agent
	if who.claims != nil {
		agent.ID = who.claims.AgentID
		if err := registry.PinLabels(agent, labels.FromMap(who.claims.Labels)); err != nil {
			return err
		}
		reg.Token = &registry.TokenGrant{}
		if who.claims.IssuedAt != nil {
			reg.Token.IssuedAt = who.claims.IssuedAt.Time
		}
		if who.claims.SingleUse {
			reg.Token.Claim = &store.TokenClaim{ID: who.claims.ID, Expires: now.Add(time.Hour)}
			if who.claims.ExpiresAt != nil {
				reg.Token.Claim.Expires = who.claims.ExpiresAt.Time
			}
		}
	} else {
		// Re-registration by certificate: only for the certificate's own id
		// and hostname, or a host could use its certificate to pose as
		// another; renaming a host takes a new token. Whether the
		// certificate is still the agent's is decided on the stored record.
		agent.ID = who.id
		reg.Serial = who.serial
		if who.hostname != "" && agent.Hostname != who.hostname {
			return a.auth.reject(&apiError{http.StatusForbidden, "hostname_mismatch",
				fmt.Sprintf("hostname %q differs from the certificate's %q: enroll with a new token to rename a host", agent.Hostname, who.hostname)})
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
		return err
	}
	if err := a.cfg.Registry.Register(r.Context(), reg); err != nil {
		return err
	}
	a.issued("register")
	if who.claims != nil {
		a.regLog.log(slog.LevelInfo, "Agent enrolled", "agent_id", agent.ID, "hostname", agent.Hostname,
			"remote_addr", sourceIP(r), "token_id", who.claims.ID)
	} else {
		a.cfg.Logger.Debug("Agent registered", "agent_id", agent.ID, "hostname", agent.Hostname)
	}
	writeJSON(w, http.StatusOK, a.certificateResponse(agent.ID, signed.leaf, signed.chain))
	return nil
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

func (a *API) heartbeat(w http.ResponseWriter, r *http.Request) error {
	who, err := a.auth.agent(r)
	if err != nil {
		return err
	}
	var req protocol.HeartbeatRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	if len(req.Status) > protocol.MaxStatusLen {
		return badRequest(fmt.Sprintf("status is longer than %d bytes", protocol.MaxStatusLen))
	}
	if err := protocol.ValidateExporterHealth(req.Exporters); err != nil {
		return badRequest("exporters: " + err.Error())
	}
	if err := a.cfg.Registry.Heartbeat(who.id, who.serial, req.Status, req.Exporters); err != nil {
		return err
	}
	cfg := a.cfg.Registry.Config()
	writeJSON(w, http.StatusOK, protocol.HeartbeatResponse{
		TTLSeconds:               int(cfg.TTL / time.Second),
		HeartbeatIntervalSeconds: int(cfg.HeartbeatInterval / time.Second),
		RenewNow:                 who.legacy,
	})
	return nil
}

// renew signs a new certificate for an agent. Over mTLS the current
// certificate authenticates it; a host whose certificate expired while it was
// off sends that certificate and a CSR signed by the same key instead.
func (a *API) renew(w http.ResponseWriter, r *http.Request) error {
	cert, err := a.auth.certificate(r)
	if err != nil {
		return err
	}
	var req protocol.RenewRequest
	if err := decode(w, r, &req, false); err != nil {
		return err
	}
	csr, err := ca.ParseCSR([]byte(req.CSR))
	if err != nil {
		return badRequest("csr: " + err.Error())
	}
	var who *identity
	if cert != nil {
		who, err = a.auth.agent(r)
	} else {
		who, err = a.expiredIdentity(req.Certificate, csr)
	}
	if err != nil {
		return err
	}
	fp, err := ca.KeyFingerprint(csr.PublicKey)
	if err != nil {
		return &apiError{http.StatusBadRequest, "bad_key", "csr: " + err.Error()}
	}
	var signed *signedCert
	err = a.cfg.Registry.Renew(r.Context(), registry.Renewal{
		ID: who.id, Serial: who.serial, KeyFingerprint: fp, ProofOfPossession: cert == nil,
	}, func(template *store.Agent) (err error) {
		signed, err = a.sign(template, csr.PublicKey)
		return err
	})
	if err != nil {
		return err
	}
	a.issued("renew")
	writeJSON(w, http.StatusOK, a.certificateResponse(who.id, signed.leaf, signed.chain))
	return nil
}

func (a *API) deregister(w http.ResponseWriter, r *http.Request) error {
	who, err := a.auth.agent(r)
	if err != nil {
		return err
	}
	if err := a.cfg.Registry.Deregister(r.Context(), who.id, who.serial); err != nil {
		return err
	}
	a.cfg.Logger.Info("Agent deregistered", "agent_id", who.id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
