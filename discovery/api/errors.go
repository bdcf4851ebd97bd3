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
	"context"
	"errors"
	"log/slog"
	"net/http"
	"syscall"

	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// apiError is a refusal that carries its own answer: an authentication or
// authorization failure (status says which) or a bad request. reason feeds
// the metrics and the refusal log, msg is safe to show.
type apiError struct {
	status int
	reason string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

// badRequest refuses a request that does not parse or validate.
func badRequest(msg string) *apiError {
	return &apiError{http.StatusBadRequest, "bad_request", msg}
}

// rejection is the counter a refusal is counted in besides its endpoint's.
type rejection int

const (
	// The zero value counts a refusal in its endpoint's counter only.
	_ rejection = iota
	// certRejected counts in baremetal_sd_cert_rejections_total.
	certRejected
	// tokenRejected counts in baremetal_sd_token_rejections_total.
	tokenRejected
)

// errorRule answers the errors match accepts.
type errorRule struct {
	match  func(error) bool
	status int
	reason string
	// msg is the body's error; empty takes the error's own text.
	msg     string
	counted rejection
	// level, if not zero, logs the error: the client did nothing wrong.
	level slog.Level
	log   string
}

func is(targets ...error) func(error) bool {
	return func(err error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
}

func as[T error](err error) bool {
	var t T
	return errors.As(err, &t)
}

// errorTable is the one mapping of the registry's and the store's errors to
// HTTP statuses, for every endpoint. The first rule that matches answers;
// an error no rule matches is a 500.
var errorTable = []errorRule{
	{match: is(store.ErrTokenUsed), status: http.StatusUnauthorized, reason: "reused",
		msg: "token refused: single-use token was already used", counted: tokenRejected},
	{match: is(registry.ErrTokenBeforeRevocation), status: http.StatusUnauthorized, reason: "revoked",
		msg: "token refused: the agent was revoked after this token was issued", counted: tokenRejected},
	{match: is(registry.ErrRevoked), status: http.StatusForbidden, reason: "revoked",
		msg: "agent is revoked", counted: certRejected},
	{match: is(registry.ErrSuperseded), status: http.StatusForbidden, reason: "superseded",
		msg: "certificate is superseded by a newer enrollment", counted: certRejected},
	{match: is(registry.ErrKeyMismatch), status: http.StatusForbidden, reason: "key_mismatch",
		msg: "csr key is not the key the agent enrolled with", counted: certRejected},
	{match: is(registry.ErrUnknownAgent), status: http.StatusNotFound, reason: "not_found",
		msg: "no such agent"},
	// An agent's own certificate, of an agent the registry lost or that
	// deregistered itself: the agent registers again.
	{match: is(store.ErrNotFound, registry.ErrDeregistered), status: http.StatusNotFound, reason: "not_found",
		msg: "agent not registered: register again"},
	{match: as[*registry.LabelConflictError], status: http.StatusForbidden, reason: "label_constraint"},
	{match: as[*registry.ConflictError], status: http.StatusConflict, reason: "conflict"},
	// A full disk under the registry passes once an operator frees space:
	// the write was refused, not half done (bolt rolls the transaction
	// back), and the client's retry will succeed, so it is a 503 that says
	// why, not a 500.
	{match: is(syscall.ENOSPC, syscall.EDQUOT), status: http.StatusServiceUnavailable, reason: "no_space",
		msg: "registry store out of disk space, retry later", level: slog.LevelError, log: "Registry store out of disk space"},
	{match: is(store.ErrUnavailable, context.DeadlineExceeded), status: http.StatusServiceUnavailable, reason: "unavailable",
		msg: "registry store unavailable, retry later", level: slog.LevelWarn, log: "Store unavailable"},
}

// internalError answers what no rule matches.
var internalError = errorRule{status: http.StatusInternalServerError, reason: "error", msg: "internal error",
	level: slog.LevelError, log: "Request failed"}

// fail answers err and returns the status and the reason it counted.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) (int, string) {
	rule := classify(err)
	switch rule.counted {
	case certRejected:
		a.auth.countCert(rule.reason)
	case tokenRejected:
		a.auth.countToken(rule.reason)
	}
	if rule.log != "" {
		a.cfg.Logger.Log(r.Context(), rule.level, rule.log, "path", r.URL.Path, "err", err)
	}
	if rule.status == http.StatusUnauthorized {
		// RFC 9110: a 401 names the scheme that would work.
		w.Header().Set("WWW-Authenticate", `Bearer realm="baremetal_sd"`)
	}
	writeError(w, rule.status, rule.msg)
	return rule.status, rule.reason
}

// classify finds the rule that answers err. An *apiError answers itself; it
// was counted where it was made.
func classify(err error) errorRule {
	var ae *apiError
	if errors.As(err, &ae) {
		return errorRule{status: ae.status, reason: ae.reason, msg: ae.msg}
	}
	for _, rule := range errorTable {
		if rule.match(err) {
			if rule.msg == "" {
				rule.msg = err.Error()
			}
			return rule
		}
	}
	return internalError
}
