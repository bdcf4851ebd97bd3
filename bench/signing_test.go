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
	"crypto/rand"
	"crypto/rsa"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
)

// BenchmarkServerSigning compares, side by side, what one registration costs
// the server in CPU for its key material: our design parses the agent's CSR
// and signs it with the ECDSA CA; a naive design generates an RSA key for the
// agent on the server. The agent-side ECDSA key and CSR are shown for
// reference: that work happens on every host, not on the server.
//
//	go test -run '^$' -bench BenchmarkServerSigning -benchtime 3s -count 5 ./bench
func BenchmarkServerSigning(b *testing.B) {
	dir := b.TempDir()
	authority, _, err := ca.LoadOrCreate(dir)
	if err != nil {
		b.Fatal(err)
	}
	id, err := newIdentity(1)
	if err != nil {
		b.Fatal(err)
	}

	b.Run("ecdsa_p256_parse_csr_and_sign_agent", func(b *testing.B) {
		for b.Loop() {
			csr, err := ca.ParseCSR([]byte(id.csr))
			if err != nil {
				b.Fatal(err)
			}
			if _, _, err := authority.SignAgent(ca.AgentCertRequest{
				AgentID:   "bench00000000000000000001",
				Hostname:  id.hostname,
				Address:   id.address,
				PublicKey: csr.PublicKey,
				TTL:       24 * time.Hour,
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rsa2048_generate_key", func(b *testing.B) {
		for b.Loop() {
			if _, err := rsa.GenerateKey(rand.Reader, 2048); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("agent_side_ecdsa_p256_key_and_csr", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if _, err := newIdentity(i); err != nil {
				b.Fatal(err)
			}
		}
	})
}
