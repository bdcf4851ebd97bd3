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
	"mime"
	"net/http"
)

// stateChanging guards the handlers that change state (register, heartbeat,
// renew, deregister, revoke, maintenance) against requests a browser sends
// on behalf of another site. A browser that holds an admin or agent client
// certificate presents it to any page's request, so the certificate alone
// does not show that its owner meant the request.
//
// Two checks, before authentication:
//   - cross-origin requests are refused: Sec-Fetch-Site other than
//     same-origin or none, or else an Origin whose host is not the
//     request's (http.CrossOriginProtection). Clients that are not browsers
//     send neither header and pass.
//   - a body must be declared application/json. Browsers send text/plain,
//     form and multipart bodies across sites without asking the server
//     first (CORS "simple requests"); our clients send JSON.
type stateChanging struct {
	api         *API
	crossOrigin *http.CrossOriginProtection
}

func newStateChanging(a *API) *stateChanging {
	return &stateChanging{api: a, crossOrigin: http.NewCrossOriginProtection()}
}

// wrap returns h behind both checks.
func (s *stateChanging) wrap(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.crossOrigin.Check(r); err != nil {
			s.refuse(w, http.StatusForbidden, "cross_origin", "cross-origin request refused: "+err.Error())
			return
		}
		if !jsonContent(r) {
			w.Header().Set("Accept", "application/json")
			s.refuse(w, http.StatusUnsupportedMediaType, "content_type", "request body must be Content-Type: application/json")
			return
		}
		h(w, r)
	}
}

func (s *stateChanging) refuse(w http.ResponseWriter, status int, reason, msg string) {
	if m := s.api.cfg.Metrics; m != nil {
		m.RequestRejections.WithLabelValues(reason).Inc()
	}
	writeError(w, status, msg)
}

// jsonContent reports whether a request's body, if it has one, is declared
// as JSON. A request without a body may leave Content-Type out; one that
// sets it must set application/json whatever it sends.
func jsonContent(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return !hasBody(r)
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}
