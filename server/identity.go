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
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
)

// identityStore is where replicas sharing a registry agree on their CA and
// token key: the etcd store.
type identityStore interface {
	Identity(ctx context.Context) (*etcd.ClusterIdentity, error)
	PublishIdentity(ctx context.Context, id etcd.ClusterIdentity) (etcd.ClusterIdentity, error)
	UpgradeIdentity(ctx context.Context, old, id etcd.ClusterIdentity) (etcd.ClusterIdentity, error)
}

// rootFiles are the data directory files a 0.1.0 replica shared; sharedFiles
// are those every replica of this version shares: the issuing CAs too.
var (
	rootFiles   = []string{ca.CertFile, ca.KeyFile, ca.TokenKeyFile}
	sharedFiles = append(slices.Clone(rootFiles), ca.AgentCACertFile, ca.AgentCAKeyFile, ca.ClientCACertFile, ca.ClientCAKeyFile)
)

// copyHint tells an operator how to fix a replica's data directory.
var copyHint = "copy " + strings.Join(sharedFiles, ", ") + " from a running replica's data directory"

// loadCredentials loads the CA and the token key from the data directory.
// A server of its own (shared == nil) creates what is missing on first
// start. Replicas sharing a store must all hold the same files: only the
// first one, which finds no identity in the store, may create them, and it
// publishes their fingerprints; every later replica must bring copies, and
// one whose files differ from the published fingerprints refuses to start,
// rather than issue certificates and tokens the other replicas reject.
func loadCredentials(ctx context.Context, dataDir string, shared identityStore, logger *slog.Logger) (*ca.Authority, []byte, error) {
	var published *etcd.ClusterIdentity
	if shared != nil {
		var err error
		if published, err = shared.Identity(ctx); err != nil {
			return nil, nil, fmt.Errorf("check the CA and token key against the other replicas: %w", err)
		}
		if published != nil {
			var missing []string
			files := sharedFiles
			if published.IssuersSHA256 == "" {
				// Published by a 0.1.0 replica: the issuing CAs do not
				// exist yet, and the first replica of this version
				// creates them.
				files = rootFiles
			}
			for _, name := range files {
				if _, err := os.Stat(filepath.Join(dataDir, name)); errors.Is(err, fs.ErrNotExist) {
					missing = append(missing, name)
				}
			}
			if len(missing) > 0 {
				return nil, nil, fmt.Errorf("%s missing in %s: replicas sharing etcd must use the CAs and token key of the first replica; %s",
					strings.Join(missing, ", "), dataDir, copyHint)
			}
		}
	}

	authority, createdCAs, err := ca.LoadOrCreate(dataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate authority: %w", err)
	}
	for _, f := range createdCAs {
		logger.Info("Created a new certificate authority", "path", filepath.Join(dataDir, f))
	}
	key, created, err := ca.LoadOrCreateTokenKey(dataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("token key: %w", err)
	}
	if created {
		logger.Info("Created a new token signing key", "path", filepath.Join(dataDir, ca.TokenKeyFile))
	}
	if shared == nil {
		return authority, key, nil
	}

	mine := identityOf(authority, key)
	if published != nil && published.IssuersSHA256 == "" && published.CACertSHA256 == mine.CACertSHA256 && published.TokenKeySHA256 == mine.TokenKeySHA256 {
		// Upgrading a cluster of 0.1.0 replicas: the first replica of this
		// version publishes its issuing CAs, and every later one must
		// bring copies.
		stored, err := shared.UpgradeIdentity(ctx, *published, mine)
		if err != nil {
			return nil, nil, fmt.Errorf("publish the issuing CAs' fingerprint: %w", err)
		}
		if stored == mine {
			logger.Info("Published the fingerprint of this replica's issuing CAs for the other replicas", "issuers_sha256", mine.IssuersSHA256)
		}
		published = &stored
	}
	if published == nil {
		stored, err := shared.PublishIdentity(ctx, mine)
		if err != nil {
			return nil, nil, fmt.Errorf("publish the CA and token key fingerprints: %w", err)
		}
		if stored == mine {
			logger.Info("Published the fingerprints of this replica's CA and token key for the other replicas", "ca_cert_sha256", mine.CACertSHA256)
		}
		published = &stored
	}
	switch {
	case published.CACertSHA256 != mine.CACertSHA256:
		return nil, nil, fmt.Errorf("%s in %s is not the CA of the other replicas (SHA-256 %s, theirs %s): %s",
			ca.CertFile, dataDir, mine.CACertSHA256, published.CACertSHA256, copyHint)
	case published.TokenKeySHA256 != mine.TokenKeySHA256:
		return nil, nil, fmt.Errorf("%s in %s is not the token key of the other replicas: %s",
			ca.TokenKeyFile, dataDir, copyHint)
	case published.IssuersSHA256 != mine.IssuersSHA256:
		return nil, nil, fmt.Errorf("%s and %s in %s are not the issuing CAs of the other replicas: %s",
			ca.AgentCACertFile, ca.ClientCACertFile, dataDir, copyHint)
	}
	return authority, key, nil
}

// identityOf fingerprints a CA and a token key. The key's hash is domain
// separated, so it is useless for anything but this comparison; the key is
// 256 random bits, so the hash does not help guessing it.
func identityOf(authority *ca.Authority, key []byte) etcd.ClusterIdentity {
	caSum := sha256.Sum256(authority.Certificate().Raw)
	issuers := sha256.New()
	issuers.Write(authority.AgentCACertificate().Raw)
	issuers.Write(authority.ClientCACertificate().Raw)
	h := sha256.New()
	h.Write([]byte("baremetal_sd token key fingerprint\x00"))
	h.Write(key)
	return etcd.ClusterIdentity{
		CACertSHA256:   hex.EncodeToString(caSum[:]),
		TokenKeySHA256: hex.EncodeToString(h.Sum(nil)),
		IssuersSHA256:  hex.EncodeToString(issuers.Sum(nil)),
	}
}
