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

package client

import (
	"crypto/tls"
	"errors"

	"github.com/baremetal-sd/baremetal_sd/ca"
)

// VerifyServerRole is a tls.Config.VerifyConnection for every client that
// talks to a discovery server: after TLS verified the chain, it refuses a
// peer whose certificate is not a serving certificate. An enrolled host
// holds an agent certificate for the name it registered; with it, it could
// otherwise pose as the server to a client that trusts the fleet's CA and
// collect enrollment and admin tokens.
func VerifyServerRole(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server presented no certificate")
	}
	return ca.CheckServer(cs.PeerCertificates[0])
}
