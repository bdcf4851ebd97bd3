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
	"bufio"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

func (a *API) admin(w http.ResponseWriter, r *http.Request) bool {
	if _, err := a.auth.reader(r, ca.ScopeAdmin, ca.RoleAdmin); err != nil {
		a.fail(w, r, err)
		return false
	}
	return true
}

func (a *API) handleListAgents(w http.ResponseWriter, r *http.Request) {
	if !a.admin(w, r) {
		return
	}
	writeJSONList(w, a.cfg.Registry.List())
}

// writeJSONList replies with a JSON array written element by element:
// json.Encoder buffers a whole value before it writes, which for the agent
// list of 100,000 agents is an 80 MB buffer beside the list itself.
func writeJSONList[T any](w http.ResponseWriter, items []T) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	sep := byte('[')
	for i := range items {
		if err := bw.WriteByte(sep); err != nil {
			return
		}
		sep = ','
		if err := enc.Encode(&items[i]); err != nil {
			return // the client went away, or a value cannot encode: cut it short
		}
	}
	if sep == '[' {
		_ = bw.WriteByte('[')
	}
	_, _ = bw.WriteString("]\n")
	_ = bw.Flush()
}

func (a *API) handleRevoke(w http.ResponseWriter, r *http.Request) {
	if !a.admin(w, r) {
		return
	}
	now := a.cfg.Now()
	a.updateAgent(w, r, func(ag *store.Agent) error {
		if !ag.Revoked() {
			ag.RevokedAt = now
		}
		return nil
	}, "Agent revoked")
}

func (a *API) handleMaintenance(w http.ResponseWriter, r *http.Request) {
	if !a.admin(w, r) {
		return
	}
	var req protocol.MaintenanceRequest
	if status, err := decode(w, r, &req, false); err != nil {
		writeError(w, status, err.Error())
		return
	}
	a.updateAgent(w, r, func(ag *store.Agent) error {
		if ag.Revoked() {
			return &authError{http.StatusConflict, "revoked", "agent is revoked"}
		}
		ag.Maintenance = req.Maintenance
		return nil
	}, "Agent maintenance changed", "maintenance", req.Maintenance)
}

// updateAgent applies an operator's change to the agent named in the path,
// logs it and replies with the agent's new view.
func (a *API) updateAgent(w http.ResponseWriter, r *http.Request, mutate func(*store.Agent) error, logMsg string, logArgs ...any) {
	id := r.PathValue("id")
	agent, err := a.cfg.Registry.Update(r.Context(), id, mutate)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no such agent")
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.cfg.Logger.Info(logMsg, append([]any{"agent_id", id, "hostname", agent.Hostname}, logArgs...)...)
	v, _ := a.cfg.Registry.Get(id)
	writeJSON(w, http.StatusOK, v)
}

func (a *API) handleCA(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(a.cfg.CA.CertificatePEM())
}
