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

package server

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
)

// CreateToken signs a token with the token key in dataDir. It runs on the
// server host: the key never leaves the data directory.
func CreateToken(dataDir string, spec ca.TokenSpec) (string, error) {
	switch spec.Scope {
	case ca.ScopeEnroll, ca.ScopeDiscovery, ca.ScopeAdmin:
	default:
		return "", fmt.Errorf("unknown scope %q (enroll, discovery or admin)", spec.Scope)
	}
	if spec.Scope != ca.ScopeEnroll && (spec.AgentID != "" || len(spec.Labels) > 0 || spec.SingleUse) {
		return "", fmt.Errorf("--agent.id, --label and --single-use only apply to enroll tokens")
	}
	if spec.AgentID != "" {
		if err := protocol.ValidateAgentID(spec.AgentID); err != nil {
			return "", err
		}
	}
	if err := protocol.ValidateLabels(spec.Labels); err != nil {
		return "", err
	}
	if spec.TTL <= 0 {
		return "", fmt.Errorf("token TTL must be positive")
	}
	key, err := ca.LoadTokenKey(dataDir)
	if err != nil {
		return "", fmt.Errorf("load token key (run the server once to create %s): %w", dataDir, err)
	}
	return ca.NewTokens(key).Create(spec, time.Now())
}

// TunnelCAFile is the bundle of the server CA and the agent CA that
// IssueClientCert writes for scrape jobs through tunnels.
const TunnelCAFile = "tunnel-ca.crt"

// IssueClientCert writes into outDir what Prometheus or an operator needs:
// NAME.crt (the certificate and the client CA that issued it), NAME.key
// (0600), ca.crt (the server CA: the tls_config ca_file of http_sd and of
// the `agents` command) and agent-ca.crt (the agent CA: the tls_config
// ca_file of scrape jobs). Neither CA file verifies any other kind of
// certificate the server issues. It also writes tunnel-ca.crt, both CAs,
// for the one tls_config of scrape jobs through tunnels.
func IssueClientCert(dataDir, name string, role ca.Role, ttl time.Duration, outDir string) error {
	if err := protocol.ValidateAgentID(name); err != nil {
		return fmt.Errorf("certificate name: %w", err)
	}
	if role != ca.RoleDiscovery && role != ca.RoleAdmin {
		return fmt.Errorf("unknown role %q (discovery or admin)", role)
	}
	authority, err := ca.Load(dataDir)
	if err != nil {
		return fmt.Errorf("load CA (run the server once to create %s): %w", dataDir, err)
	}
	certPEM, keyPEM, err := authority.IssueClient(name, role, ttl)
	if err != nil {
		return fmt.Errorf("issue certificate %q: %w", name, err)
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return fmt.Errorf("create output directory: %w", err)
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{name + ".key", keyPEM, 0o600},
		{name + ".crt", certPEM, 0o644},
		{ca.CertFile, authority.CertificatePEM(), 0o644},
		{ca.AgentCACertFile, authority.AgentCACertificatePEM(), 0o644},
		// The proxied job's one tls_config verifies the server as the
		// proxy and the agent as the target (docs/tunnels.md).
		{TunnelCAFile, slices.Concat(authority.CertificatePEM(), authority.AgentCACertificatePEM()), 0o644},
	}
	for _, f := range files {
		if err := fileutil.WriteAtomic(filepath.Join(outDir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}
