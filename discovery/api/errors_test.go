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
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// TestErrorTable_Answers pins the one error-to-status table: for each error
// the registry and the store return, wrapped as they come through the
// registry, the status, JSON error, reason and rejection counter that the
// endpoints answered with before the table replaced their own mappings.
func TestErrorTable_Answers(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		reason string
		msg    string
		// cert and token are the rejection counters' labels it counts in.
		cert, token string
	}{
		{"token used", fmt.Errorf("store agent %q: %w", "a", store.ErrTokenUsed), 401, "reused", "token refused: single-use token was already used", "", "reused"},
		{"token before revocation", fmt.Errorf("x: %w", registry.ErrTokenBeforeRevocation), 401, "revoked", "token refused: the agent was revoked after this token was issued", "", "revoked"},
		{"revoked", fmt.Errorf("deregister agent %q: %w", "a", registry.ErrRevoked), 403, "revoked", "agent is revoked", "revoked", ""},
		{"superseded", registry.ErrSuperseded, 403, "superseded", "certificate is superseded by a newer enrollment", "superseded", ""},
		{"key mismatch", fmt.Errorf("x: %w", registry.ErrKeyMismatch), 403, "key_mismatch", "csr key is not the key the agent enrolled with", "key_mismatch", ""},
		{"unknown agent", registry.ErrUnknownAgent, 404, "not_found", "no such agent", "", ""},
		{"not registered", store.ErrNotFound, 404, "not_found", "agent not registered: register again", "", ""},
		{"deregistered", fmt.Errorf("x: %w", registry.ErrDeregistered), 404, "not_found", "agent not registered: register again", "", ""},
		{"label conflict", &registry.LabelConflictError{Name: "role", Value: "db"}, 403, "label_constraint", `label "role" must be "db" for this agent's enrollment token`, "", ""},
		{"conflict", &registry.ConflictError{State: discovery.StateRevoked}, 409, "conflict", "agent is revoked", "", ""},
		{"no space", fmt.Errorf("store agent: %w", syscall.ENOSPC), 503, "no_space", "registry store out of disk space, retry later", "", ""},
		{"quota", syscall.EDQUOT, 503, "no_space", "registry store out of disk space, retry later", "", ""},
		{"unavailable", fmt.Errorf("x: %w", store.ErrUnavailable), 503, "unavailable", "registry store unavailable, retry later", "", ""},
		{"deadline", context.DeadlineExceeded, 503, "unavailable", "registry store unavailable, retry later", "", ""},
		{"anything else", errors.New("boom"), 500, "error", "internal error", "", ""},
		{"api error", &apiError{http.StatusForbidden, "hostname_mismatch", "hostname differs"}, 403, "hostname_mismatch", "hostname differs", "", ""},
		{"bad request", badRequest("invalid JSON body"), 400, "bad_request", "invalid JSON body", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			metrics := collector.NewServer(prometheus.NewRegistry())
			a := New(Config{Metrics: metrics})
			w := httptest.NewRecorder()
			status, reason := a.fail(w, httptest.NewRequest("POST", protocol.PathHeartbeat, nil), tt.err)
			if status != tt.status || w.Code != tt.status || reason != tt.reason {
				t.Errorf("fail = %d %q (wrote %d), want %d %q", status, reason, w.Code, tt.status, tt.reason)
			}
			var body protocol.ErrorResponse
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error != tt.msg {
				t.Errorf("body %q (%v), want error %q", w.Body.String(), err, tt.msg)
			}
			if got := w.Header().Get("WWW-Authenticate") != ""; got != (tt.status == http.StatusUnauthorized) {
				t.Errorf("WWW-Authenticate set: %v, want it on 401 only", got)
			}
			if got := testutil.CollectAndCount(metrics.CertRejections); (tt.cert != "") != (got == 1) {
				t.Errorf("%d certificate rejections counted, want label %q", got, tt.cert)
			} else if tt.cert != "" && testutil.ToFloat64(metrics.CertRejections.WithLabelValues(tt.cert)) != 1 {
				t.Errorf("certificate rejection not counted as %q", tt.cert)
			}
			if got := testutil.CollectAndCount(metrics.TokenRejections); (tt.token != "") != (got == 1) {
				t.Errorf("%d token rejections counted, want label %q", got, tt.token)
			} else if tt.token != "" && testutil.ToFloat64(metrics.TokenRejections.WithLabelValues(tt.token)) != 1 {
				t.Errorf("token rejection not counted as %q", tt.token)
			}
		})
	}
}
