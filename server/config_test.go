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
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/errtest"
)

func TestCheckConfig(t *testing.T) {
	etcd := func(e EtcdConfig) Config {
		if e.Endpoints == nil {
			e.Endpoints = []string{"http://127.0.0.1:2379"}
		}
		if e.ReplicaID == "" {
			e.ReplicaID = "r1"
		}
		return Config{StorageBackend: "etcd", AgentTTL: 5 * time.Minute, Etcd: e}
	}
	tests := []struct {
		name      string
		cfg       Config
		wantErr   string
		wantFlush time.Duration
	}{
		{"bolt default flush", Config{AgentTTL: 5 * time.Minute}, "", 5 * time.Second},
		{"etcd default flush", etcd(EtcdConfig{}), "", 30 * time.Second},
		{"etcd default flush capped by a short TTL", func() Config { c := etcd(EtcdConfig{}); c.AgentTTL = 40 * time.Second; return c }(), "", 10 * time.Second},
		{"bolt default flush capped by a short TTL", Config{AgentTTL: 8 * time.Second}, "", 2 * time.Second},
		{"explicit flush kept", Config{AgentTTL: 5 * time.Minute, FlushInterval: 75 * time.Second}, "", 75 * time.Second},
		{"flush above a quarter of the TTL", Config{AgentTTL: 5 * time.Minute, FlushInterval: 76 * time.Second}, "at most a quarter of --agent.ttl", 0},
		{"negative flush", Config{AgentTTL: 5 * time.Minute, FlushInterval: -time.Second}, "must be positive", 0},
		{"no TTL", Config{}, "--agent.ttl", 0},
		{"etcd flags without etcd", Config{AgentTTL: time.Minute, Etcd: EtcdConfig{Endpoints: []string{"http://e:2379"}}}, "--storage.backend is not etcd", 0},
		{"no endpoints", etcd(EtcdConfig{Endpoints: []string{" , "}}), "needs --etcd.endpoints", 0},
		{"endpoint without scheme", etcd(EtcdConfig{Endpoints: []string{"127.0.0.1:2379"}}), "not an http:// or https:// URL", 0},
		{"mixed schemes", etcd(EtcdConfig{Endpoints: []string{"http://a:2379,https://b:2379"}}), "mixes http:// and https://", 0},
		{"key without certificate", etcd(EtcdConfig{Endpoints: []string{"https://a:2379"}, KeyFile: "k"}), "--etcd.cert-file and --etcd.key-file go together", 0},
		{"certificate without key", etcd(EtcdConfig{Endpoints: []string{"https://a:2379"}, CertFile: "c"}), "--etcd.cert-file and --etcd.key-file go together", 0},
		{"CA with http", etcd(EtcdConfig{CAFile: "ca"}), "need https:// endpoints", 0},
		{"client certificate with http", etcd(EtcdConfig{CertFile: "c", KeyFile: "k"}), "need https:// endpoints", 0},
		{"TLS complete", etcd(EtcdConfig{Endpoints: []string{"https://a:2379", "https://b:2379"}, CAFile: "ca", CertFile: "c", KeyFile: "k"}), "", 30 * time.Second},
		{"user without password", etcd(EtcdConfig{Username: "u"}), "--etcd.username and --etcd.password-file go together", 0},
		{"password without user", etcd(EtcdConfig{PasswordFile: "p"}), "--etcd.username and --etcd.password-file go together", 0},
		{"bad replica id", etcd(EtcdConfig{ReplicaID: "a/b"}), "--etcd.replica-id", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			err := checkConfig(&cfg)
			if errtest.Want(t, err, tc.wantErr) {
				return
			}
			if cfg.FlushInterval != tc.wantFlush {
				t.Errorf("flush interval %s, want %s", cfg.FlushInterval, tc.wantFlush)
			}
		})
	}
}

func TestCheckConfig_EtcdEndpointsAndDefaultReplica(t *testing.T) {
	cfg := Config{StorageBackend: "etcd", AgentTTL: time.Minute, Etcd: EtcdConfig{
		Endpoints: []string{"http://a:2379, http://b:2379", "http://c:2379"},
	}}
	if err := checkConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Etcd.Endpoints, " "); got != "http://a:2379 http://b:2379 http://c:2379" {
		t.Errorf("endpoints %q", got)
	}
	if cfg.Etcd.ReplicaID == "" {
		t.Error("no default replica id")
	}
}
