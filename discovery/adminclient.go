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
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// maxAdminResponse bounds what the admin client reads: the agent list of a
// large fleet is big, but not unbounded.
const maxAdminResponse = 512 << 20

// AdminClient calls the server's admin endpoints for the `agents` commands.
// HTTPClient carries the TLS trust and, if used, the admin client
// certificate; Token, if set, is sent as a bearer token of scope admin.
type AdminClient struct {
	BaseURL    string
	HTTPClient *http.Client
	Token      string
}

// ListAgents returns every agent the server knows, with its state.
func (c *AdminClient) ListAgents(ctx context.Context) ([]AgentView, error) {
	var out []AgentView
	if err := c.call(ctx, http.MethodGet, protocol.PathAgents, nil, &out); err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return out, nil
}

// Revoke revokes an agent: its certificates are refused from now on and it
// leaves http_sd.
func (c *AdminClient) Revoke(ctx context.Context, id string) (*AgentView, error) {
	var out AgentView
	if err := c.call(ctx, http.MethodDelete, protocol.PathAgents+"/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, fmt.Errorf("revoke agent %q: %w", id, err)
	}
	return &out, nil
}

// SetMaintenance turns an agent's maintenance flag on or off.
func (c *AdminClient) SetMaintenance(ctx context.Context, id string, on bool) (*AgentView, error) {
	var out AgentView
	body := protocol.MaintenanceRequest{Maintenance: on}
	if err := c.call(ctx, http.MethodPost, protocol.PathAgents+"/"+url.PathEscape(id)+"/maintenance", body, &out); err != nil {
		return nil, fmt.Errorf("set maintenance of agent %q: %w", id, err)
	}
	return &out, nil
}

func (c *AdminClient) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminResponse))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e protocol.ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("server answered %d: %s", resp.StatusCode, e.Error)
		}
		return fmt.Errorf("server answered %d", resp.StatusCode)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}
