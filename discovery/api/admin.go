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
	"bufio"
	"encoding/json"
	"net/http"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// admin authenticates an operator: an admin certificate or token.
func (a *API) admin(r *http.Request) error {
	_, err := a.auth.reader(r, ca.ScopeAdmin, ca.RoleAdmin)
	return err
}

func (a *API) listAgents(w http.ResponseWriter, r *http.Request) error {
	if err := a.admin(r); err != nil {
		return err
	}
	writeJSONList(w, a.cfg.Registry.List())
	return nil
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

func (a *API) revoke(w http.ResponseWriter, r *http.Request) error {
	if err := a.admin(r); err != nil {
		return err
	}
	v, err := a.cfg.Registry.Revoke(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	a.changed(w, v, "Agent revoked")
	return nil
}

func (a *API) maintenance(w http.ResponseWriter, r *http.Request) error {
	if err := a.admin(r); err != nil {
		return err
	}
	var req protocol.MaintenanceRequest
	if err := decode(w, r, &req, false); err != nil {
		return err
	}
	v, err := a.cfg.Registry.SetMaintenance(r.Context(), r.PathValue("id"), req.Maintenance)
	if err != nil {
		return err
	}
	a.changed(w, v, "Agent maintenance changed", "maintenance", req.Maintenance)
	return nil
}

// changed logs an operator's change and replies with the agent's new view.
func (a *API) changed(w http.ResponseWriter, v discovery.AgentView, logMsg string, logArgs ...any) {
	a.cfg.Logger.Info(logMsg, append([]any{"agent_id", v.ID, "hostname", v.Hostname}, logArgs...)...)
	writeJSON(w, http.StatusOK, v)
}

func (a *API) handleCA(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(a.cfg.CA.CertificatePEM())
}
