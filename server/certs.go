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
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/web"
)

const (
	// servingCertTTL is the lifetime of the serving certificate the server
	// makes for itself when no --web.config.file is given.
	servingCertTTL = 365 * 24 * time.Hour
	// servingCertCheckInterval is how often a running server checks that
	// certificate. It is replaced in the last third of its lifetime, so a
	// server that runs for years keeps a valid one, and an hourly check
	// leaves months to notice a failing renewal.
	servingCertCheckInterval = time.Hour
)

// servingCert keeps the auto-created serving certificate in dir fresh.
type servingCert struct {
	authority *ca.Authority
	dir       string
	names     []string
	ttl       time.Duration
	logger    *slog.Logger
}

// ensure replaces the certificate when it is missing, not ours, lacks a
// name or is in the last third of its lifetime, and logs a replacement.
// The TLS layer serves the new certificate from the next handshake on.
func (s *servingCert) ensure() error {
	written, err := s.authority.EnsureServingCert(s.dir, s.names, s.ttl)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	if written != nil {
		s.logger.Info("Wrote a new serving certificate", "file", filepath.Join(s.dir, ca.ServerCertFile), "names", s.names, "expires", written.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// run checks the certificate every interval until ctx ends. A failed
// renewal is logged and tried again at the next check; the old certificate
// stays in use meanwhile.
func (s *servingCert) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.ensure(); err != nil {
			s.logger.Error("Renewing the serving certificate failed; the current one stays in use", "err", err, "retry_in", interval)
		}
	}
}

// certificateExpiries reports when the CA and the serving certificate that
// webConfigFile names expire. The web config and the certificate are read
// at every call, as the TLS layer reads them at every handshake, so a
// certificate the operator replaced shows at once; one that cannot be read
// is left out.
func certificateExpiries(authority *ca.Authority, webConfigFile string) func() map[string]time.Time {
	return func() map[string]time.Time {
		expiries := map[string]time.Time{"ca": authority.Certificate().NotAfter}
		if notAfter, err := servingCertExpiry(webConfigFile); err == nil {
			expiries["serving"] = notAfter
		}
		return expiries
	}
}

func servingCertExpiry(webConfigFile string) (time.Time, error) {
	c, err := web.LoadConfig(webConfigFile)
	if err != nil {
		return time.Time{}, err
	}
	if c.TLSConfig.TLSCertPath != "" {
		return certFileExpiry(c.TLSConfig.TLSCertPath)
	}
	cert, err := ca.ParseCertificatePEM([]byte(c.TLSConfig.TLSCert))
	if err != nil {
		return time.Time{}, fmt.Errorf("web config %s: cert: %w", webConfigFile, err)
	}
	return cert.NotAfter, nil
}

// certFileExpiry returns the NotAfter of the first certificate in path,
// which for a chain is the leaf.
func certFileExpiry(path string) (time.Time, error) {
	pemData, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	cert, err := ca.ParseCertificatePEM(pemData)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", path, err)
	}
	return cert.NotAfter, nil
}
