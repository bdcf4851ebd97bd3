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
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
)

// openTestEtcd checks cfg like Run does and opens the store it names.
func openTestEtcd(t *testing.T, e EtcdConfig) (*etcd.Store, error) {
	t.Helper()
	if e.Timeout == 0 {
		e.Timeout = 3 * time.Second
	}
	cfg := Config{StorageBackend: "etcd", AgentTTL: time.Minute, Etcd: e, Logger: slog.New(slog.DiscardHandler)}
	if err := checkConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), etcdtest.Wait)
	defer cancel()
	opts, err := etcdOptions(cfg.Etcd, cfg.Logger)
	if err != nil {
		return nil, err
	}
	st, err := openStore(ctx, cfg, opts)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { st.Close() })
	return st.(*etcd.Store), nil
}

// useStore registers, claims, flushes, lists and checks health: every kind
// of request the server makes.
func useStore(ctx context.Context, s *etcd.Store) error {
	a := &store.Agent{ID: "agent-1", Hostname: "h.example.com", Address: "192.0.2.1", Port: 9956, LastSeen: time.Now()}
	if _, err := s.List(ctx); err != nil {
		return err
	}
	if _, err := s.Update(ctx, a.ID, &store.TokenClaim{ID: "jti", Expires: time.Now().Add(time.Hour)}, func(*store.Agent) (*store.Agent, error) {
		return a, nil
	}); err != nil {
		return err
	}
	if err := s.Touch(ctx, []store.Touch{{ID: a.ID, LastSeen: time.Now()}}); err != nil {
		return err
	}
	if _, err := s.List(ctx); err != nil {
		return err
	}
	return s.Healthy(ctx)
}

func TestEtcd_ClientTLS(t *testing.T) {
	c := etcdtest.StartWith(t, etcdtest.Options{TLS: true})
	files := c.TLS
	tests := []struct {
		name    string
		e       EtcdConfig
		wantErr string
	}{
		{"client certificate", EtcdConfig{CAFile: files.CAFile, CertFile: files.CertFile, KeyFile: files.KeyFile}, ""},
		// etcd runs with --client-cert-auth.
		// The request only times out; the error names the cause.
		{"no client certificate", EtcdConfig{CAFile: files.CAFile}, "unavailable: context deadline exceeded (connecting to etcd: https://"},
		// The system roots do not know the test CA.
		{"server not verified", EtcdConfig{CertFile: files.CertFile, KeyFile: files.KeyFile}, "x509: certificate signed by unknown authority"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.e.Endpoints = c.Endpoints()
			tc.e.Prefix = "/tls-" + string(rune('a'+i)) + "/"
			tc.e.ReplicaID = "tls"
			s, err := openTestEtcd(t, tc.e)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), useTimeout(tc.wantErr))
				err = useStore(ctx, s)
				cancel()
			}
			t.Logf("error: %v", err)
			checkErr(t, err, tc.wantErr)
		})
	}
	if _, err := etcdOptions(EtcdConfig{Endpoints: c.Endpoints(), CertFile: files.CertFile, KeyFile: filepath.Join(t.TempDir(), "missing.key")}, nil); err == nil || !strings.Contains(err.Error(), "--etcd.key-file") {
		t.Errorf("missing key file: %v", err)
	}
}

func TestEtcd_Auth(t *testing.T) {
	c := etcdtest.Start(t, 1)
	const prefix = "/auth/"
	c.EnableAuth("baremetal_sd", "s3cret", prefix)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, wrong, empty := write("good", "s3cret\n"), write("wrong", "guess"), write("empty", "\n")
	tests := []struct {
		name    string
		e       EtcdConfig
		wantErr string
	}{
		{"user and password", EtcdConfig{Username: "baremetal_sd", PasswordFile: good}, ""},
		{"wrong password", EtcdConfig{Username: "baremetal_sd", PasswordFile: wrong}, "authentication failed"},
		{"empty password file", EtcdConfig{Username: "baremetal_sd", PasswordFile: empty}, "is empty"},
		{"no credentials", EtcdConfig{}, "user name is empty"},
		{"outside the user's prefix", EtcdConfig{Username: "baremetal_sd", PasswordFile: good, Prefix: "/other/"}, "permission denied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.e.Endpoints = c.Endpoints()
			if tc.e.Prefix == "" {
				tc.e.Prefix = prefix
			}
			tc.e.ReplicaID = "auth"
			s, err := openTestEtcd(t, tc.e)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), useTimeout(tc.wantErr))
				err = useStore(ctx, s)
				cancel()
			}
			t.Logf("error: %v", err)
			checkErr(t, err, tc.wantErr)
		})
	}
}

// useTimeout bounds useStore: a store that cannot work keeps retrying
// until its context ends.
func useTimeout(wantErr string) time.Duration {
	if wantErr == "" {
		return etcdtest.Wait
	}
	return 2 * time.Second
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatal(err)
	case want != "" && (err == nil || !strings.Contains(strings.ToLower(err.Error()), want)):
		t.Fatalf("error %v, want one containing %q", err, want)
	}
}
