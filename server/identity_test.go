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
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
)

func copyFiles(t *testing.T, from, to string, names ...string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoadCredentials_SharedStore: the first replica on an etcd prefix
// creates the CA and token key and publishes their fingerprints; every
// other replica must bring copies of the same files.
func TestLoadCredentials_SharedStore(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), etcdtest.Wait)
	defer cancel()
	logger := slog.New(slog.DiscardHandler)
	open := func(prefix string) *etcd.Store {
		s, err := etcd.Open(ctx, etcd.Options{Endpoints: c.Endpoints(), Prefix: prefix, ReplicaID: "r"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	store := open("/identity/")
	root := t.TempDir()
	first := filepath.Join(root, "first")
	if _, _, err := loadCredentials(ctx, first, store, logger); err != nil {
		t.Fatalf("first replica: %v", err)
	}
	for _, name := range sharedFiles {
		if _, err := os.Stat(filepath.Join(first, name)); err != nil {
			t.Fatalf("first replica did not create %s: %v", name, err)
		}
	}
	// Another CA and token key, as an operator's mistake would make them.
	other := filepath.Join(root, "other")
	if _, _, err := loadCredentials(ctx, other, nil, logger); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		setup   func(dir string)
		wantErr string
	}{
		{"first replica again", func(string) {}, ""},
		{"empty data directory", func(string) {}, "ca.crt, ca.key, token.key, agent-ca.crt, agent-ca.key, client-ca.crt, client-ca.key missing"},
		{"token key not copied", func(dir string) {
			copyFiles(t, first, dir, ca.CertFile, ca.KeyFile, ca.AgentCACertFile, ca.AgentCAKeyFile, ca.ClientCACertFile, ca.ClientCAKeyFile)
		}, "token.key missing"},
		{"issuing CAs not copied", func(dir string) {
			copyFiles(t, first, dir, ca.CertFile, ca.KeyFile, ca.TokenKeyFile)
		}, "agent-ca.crt, agent-ca.key, client-ca.crt, client-ca.key missing"},
		{"copies", func(dir string) { copyFiles(t, first, dir, sharedFiles...) }, ""},
		{"own CA", func(dir string) {
			copyFiles(t, other, dir, ca.CertFile, ca.KeyFile, ca.AgentCACertFile, ca.AgentCAKeyFile, ca.ClientCACertFile, ca.ClientCAKeyFile)
			copyFiles(t, first, dir, ca.TokenKeyFile)
		}, "ca.crt in"},
		{"own token key", func(dir string) {
			copyFiles(t, first, dir, ca.CertFile, ca.KeyFile, ca.AgentCACertFile, ca.AgentCAKeyFile, ca.ClientCACertFile, ca.ClientCAKeyFile)
			copyFiles(t, other, dir, ca.TokenKeyFile)
		}, "token.key in"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := first
			if i > 0 {
				dir = filepath.Join(root, "replica"+string(rune('a'+i)))
				tc.setup(dir)
			}
			_, _, err := loadCredentials(ctx, dir, store, logger)
			checkErr(t, err, tc.wantErr)
			if _, serr := os.Stat(filepath.Join(dir, ca.CertFile)); tc.name == "empty data directory" && serr == nil {
				t.Error("a refused replica created a CA")
			}
		})
	}

	// Two first replicas racing on a fresh prefix: one publishes, the
	// other refuses.
	race := open("/identity-race/")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() {
			_, _, errs[i] = loadCredentials(ctx, filepath.Join(root, "race", string(rune('a'+i))), race, logger)
		})
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("racing first replicas: %v, %v; want exactly one refused", errs[0], errs[1])
	}
	// Nothing but the fingerprints is stored.
	resp, err := c.Client().Get(ctx, "/identity/identity")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	key, err := ca.LoadTokenKey(first)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{string(key), strings.TrimSpace(readFile(t, filepath.Join(first, ca.TokenKeyFile))), readFile(t, filepath.Join(first, ca.KeyFile))} {
		if strings.Contains(string(resp.Kvs[0].Value), secret) {
			t.Fatal("a secret is stored in etcd")
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestLoadCredentials_OwnStore: a server of its own creates its files on
// first start and reuses them.
func TestLoadCredentials_OwnStore(t *testing.T) {
	dir := t.TempDir()
	logger := slog.New(slog.DiscardHandler)
	a1, k1, err := loadCredentials(context.Background(), dir, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	a2, k2, err := loadCredentials(context.Background(), dir, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	if identityOf(a1, k1) != identityOf(a2, k2) {
		t.Fatal("second start made new credentials")
	}
}

// TestLoadCredentials_UpgradeFrom010 upgrades replicas that a 0.1.0 cluster
// left: one CA, a token key, and an identity without the issuing CAs. The
// first replica of this version creates and publishes the issuing CAs;
// another replica must bring copies rather than create its own.
func TestLoadCredentials_UpgradeFrom010(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), etcdtest.Wait)
	defer cancel()
	logger := slog.New(slog.DiscardHandler)
	store, err := etcd.Open(ctx, etcd.Options{Endpoints: c.Endpoints(), Prefix: "/upgrade/", ReplicaID: "r"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })

	root := t.TempDir()
	old := filepath.Join(root, "old")
	authority, key, err := loadCredentials(ctx, old, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	// What 0.1.0 wrote and published: the CA's template is unchanged, the
	// issuing CAs did not exist.
	for _, name := range []string{ca.AgentCACertFile, ca.AgentCAKeyFile, ca.ClientCACertFile, ca.ClientCAKeyFile} {
		if err := os.Remove(filepath.Join(old, name)); err != nil {
			t.Fatal(err)
		}
	}
	legacy := identityOf(authority, key)
	legacy.IssuersSHA256 = ""
	if _, err := store.PublishIdentity(ctx, legacy); err != nil {
		t.Fatal(err)
	}

	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	copyFiles(t, old, a, ca.CertFile, ca.KeyFile, ca.TokenKeyFile)
	copyFiles(t, old, b, ca.CertFile, ca.KeyFile, ca.TokenKeyFile)
	upgraded, _, err := loadCredentials(ctx, a, store, logger)
	if err != nil {
		t.Fatalf("first upgraded replica: %v", err)
	}
	if !bytes.Equal(upgraded.Certificate().Raw, authority.Certificate().Raw) {
		t.Fatal("the upgrade replaced the CA that agents and Prometheus trust")
	}
	published, err := store.Identity(ctx)
	if err != nil || published.IssuersSHA256 == "" {
		t.Fatalf("identity after the upgrade: %+v, %v", published, err)
	}
	if _, _, err := loadCredentials(ctx, b, store, logger); err == nil || !strings.Contains(err.Error(), "agent-ca.crt, agent-ca.key, client-ca.crt, client-ca.key missing") {
		t.Fatalf("second replica without the issuing CAs: %v", err)
	}
	copyFiles(t, a, b, ca.AgentCACertFile, ca.AgentCAKeyFile, ca.ClientCACertFile, ca.ClientCAKeyFile)
	if _, _, err := loadCredentials(ctx, b, store, logger); err != nil {
		t.Fatalf("second replica with copies: %v", err)
	}
	// A replica that made issuing CAs of its own is refused.
	own := filepath.Join(root, "own")
	copyFiles(t, old, own, ca.CertFile, ca.KeyFile, ca.TokenKeyFile)
	if _, _, err := loadCredentials(ctx, own, nil, logger); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadCredentials(ctx, own, store, logger); err == nil || !strings.Contains(err.Error(), "not the issuing CAs") {
		t.Fatalf("replica with its own issuing CAs: %v", err)
	}
}
