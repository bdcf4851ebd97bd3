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

package bench

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
)

func TestIdentities_RoundTrip(t *testing.T) {
	authority, _, err := ca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var ids []*agentIdentity
	for i := range 3 {
		id, err := newIdentity(i)
		if err != nil {
			t.Fatal(err)
		}
		_, chain, err := authority.SignAgent(ca.AgentCertRequest{AgentID: "a", Hostname: id.hostname, Address: id.address, PublicKey: id.key.Public(), TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := chainCertificate(chain, id.key)
		if err != nil {
			t.Fatal(err)
		}
		id.cert, id.id = cert, "agent-"+string(rune('a'+i))
		ids = append(ids, id)
	}
	ids = append(ids, &agentIdentity{id: "never-enrolled"}) // no certificate: skipped
	path := filepath.Join(t.TempDir(), "agents.txt")
	if err := saveIdentities(path, ids); err != nil {
		t.Fatal(err)
	}
	got, err := loadIdentities([]string{path, path})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("%d agents loaded from two copies of 3, want 6", len(got))
	}
	for i, g := range got[:3] {
		want := ids[i]
		if g.id != want.id || !g.key.Equal(want.key) || len(g.cert.Certificate) != 2 || !bytes.Equal(g.cert.Certificate[0], want.cert.Certificate[0]) {
			t.Errorf("agent %d: got %s, want %s with the same key and certificate", i, g.id, want.id)
		}
	}
	if _, err := loadIdentities([]string{filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("a missing file loaded")
	}
}
