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

package api

import (
	"net/http"

	"github.com/baremetal-sd/baremetal_sd/ca"
)

// CanReadFleet reports whether a request presents a client certificate that
// may read the agent list: one the API accepts for http_sd, verified the
// same way (it must chain to the CA, not merely to any CA the web config's
// client_ca_file trusts) with role discovery or admin. Pages outside the API,
// such as the status page, use it so that they grant no more than the API
// does. A request without a client certificate is refused without counting
// a rejection: most visitors of a page bring none.
func (a *API) CanReadFleet(r *http.Request) bool {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	_, err := a.auth.reader(r, ca.ScopeDiscovery, ca.RoleDiscovery, ca.RoleAdmin)
	return err == nil
}
