package discovery

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
