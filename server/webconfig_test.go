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
	"crypto/tls"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	toolkitweb "github.com/prometheus/exporter-toolkit/web"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/internal/errtest"
)

// TestPrepareWebConfig: the server serves TLS only. Without a web config it
// writes its own around the auto-created serving certificate; an operator's
// web config without tls_server_config is refused at start.
func TestPrepareWebConfig(t *testing.T) {
	dir := t.TempDir()
	authority, _, err := ca.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authority.EnsureServingCert(dir, []string{"localhost"}, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name    string
		file    string // "" means none given
		wantErr string
	}{
		{name: "none given: the server's own", file: ""},
		{name: "operator TLS config", file: write("tls.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")},
		{name: "no TLS", file: write("plain.yml", "http_server_config:\n  http2: true\n"), wantErr: "serves TLS only"},
		{name: "empty file", file: write("empty.yml", ""), wantErr: "serves TLS only"},
		{name: "unknown key", file: write("typo.yml", "tls_server_confg:\n  cert_file: server.crt\n"), wantErr: "web config"},
		{name: "missing file", file: filepath.Join(dir, "nope.yml"), wantErr: "web config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file
			cfg := Config{
				DataDir:     dir,
				ServerNames: []string{"localhost"},
				Web:         &toolkitweb.FlagConfig{WebConfigFile: &file},
				Logger:      slog.New(slog.DiscardHandler),
			}
			flags, auto, err := prepareWebConfig(cfg, authority)
			if errtest.Want(t, err, tt.wantErr) {
				return
			}
			// Both kinds report the serving certificate they name.
			serving, err := certFileExpiry(filepath.Join(dir, ca.ServerCertFile))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]time.Time{"ca": authority.Certificate().NotAfter, "serving": serving}
			if got := certificateExpiries(authority, *flags.WebConfigFile)(); !maps.EqualFunc(got, want, time.Time.Equal) {
				t.Errorf("certificate expiries %v, want %v", got, want)
			}
			if tt.file != "" {
				if *flags.WebConfigFile != tt.file {
					t.Errorf("web config %s, want the operator's %s", *flags.WebConfigFile, tt.file)
				}
				if auto != nil {
					t.Error("the server would rewrite the certificate of an operator's web config")
				}
				return
			}
			if auto == nil {
				t.Fatal("no renewal of the auto-created serving certificate")
			}
			own := filepath.Join(dir, WebConfigFile)
			if *flags.WebConfigFile != own {
				t.Fatalf("web config %s, want %s", *flags.WebConfigFile, own)
			}
			fi, err := os.Stat(own)
			if err != nil {
				t.Fatal(err)
			}
			if perm := fi.Mode().Perm(); perm != 0o600 {
				t.Errorf("%s has mode %o, want 600", own, perm)
			}
			data, _ := os.ReadFile(own)
			if !strings.Contains(string(data), "client_auth_type: VerifyClientCertIfGiven") {
				t.Errorf("own web config does not verify client certificates:\n%s", data)
			}
		})
	}
}

// TestServingCert_RenewsWhileRunning: a server that runs past the last third
// of its serving certificate's lifetime writes a new one, without a restart.
func TestServingCert_RenewsWhileRunning(t *testing.T) {
	dir := t.TempDir()
	authority, _, err := ca.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate that is already past its last third.
	if _, err := authority.EnsureServingCert(dir, []string{"localhost"}, time.Second); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ca.ServerCertFile)
	old, err := certFileExpiry(path)
	if err != nil {
		t.Fatal(err)
	}
	sc := &servingCert{authority: authority, dir: dir, names: []string{"localhost"}, ttl: 24 * time.Hour, logger: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc.run(ctx, 10*time.Millisecond)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := certFileExpiry(path)
		if err == nil && got.After(old.Add(time.Hour)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serving certificate not renewed: expires %v (err %v), was %v", got, err, old)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := tls.LoadX509KeyPair(path, filepath.Join(dir, ca.ServerKeyFile)); err != nil {
		t.Fatalf("renewed certificate and key do not match: %v", err)
	}
	cancel()
	<-done
}
