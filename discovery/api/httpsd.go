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
	"net/url"
	"strconv"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
)

func (a *API) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	consumer, shard, code := a.discovery(w, r)
	if a.cfg.Metrics != nil {
		a.cfg.Metrics.HTTPSDRequests.WithLabelValues(strconv.Itoa(code)).Inc()
	}
	if consumer != "" && a.cfg.Consumers != nil {
		a.cfg.Consumers.Record(consumer, shard, r.URL.RawQuery, code)
	}
}

// discovery serves http_sd. It returns who asked (empty when the request did
// not authenticate), for which scrape shard, and the response code.
func (a *API) discovery(w http.ResponseWriter, r *http.Request) (consumer, shard string, code int) {
	consumer, err := a.consumer(r)
	if err != nil {
		status, _ := a.fail(w, r, err)
		return "", "", status
	}
	// r.URL.Query would drop what it cannot parse (a ';' separator, a bad
	// escape), and with it a shard parameter: the whole list would go to
	// one shard's Prometheus.
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		status, _ := a.fail(w, r, badRequest("invalid query string: "+err.Error()))
		return consumer, "invalid", status
	}
	f, err := httpsd.ParseFilter(q)
	if err != nil {
		status, _ := a.fail(w, r, badRequest(err.Error()))
		return consumer, "invalid", status
	}
	shard = f.Shard.String()
	gz := httpsd.AcceptsGzip(r)
	body := a.cfg.Cache.Get(f)
	size := body.Size
	if gz {
		size = body.GzipSize
	}
	etag := body.ETag(gz)
	h := w.Header()
	// no-cache, not no-store: a client may keep the list and revalidate it
	// with If-None-Match; private keeps it out of shared caches.
	h.Set("Cache-Control", "private, no-cache")
	h.Set("Vary", "Accept-Encoding")
	h.Set("ETag", etag)
	if httpsd.ETagMatches(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return consumer, shard, http.StatusNotModified
	}
	h.Set("Content-Type", "application/json")
	if gz {
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("Content-Length", strconv.Itoa(size))
	w.WriteHeader(http.StatusOK)
	if a.cfg.Metrics != nil {
		a.cfg.Metrics.HTTPSDResponseBytes.Observe(float64(size))
	}
	if r.Method == http.MethodHead {
		return consumer, shard, http.StatusOK
	}
	write := body.WriteJSON
	if gz {
		write = body.WriteGzip
	}
	// An error here is the client going away (or, for the JSON, a cache
	// bug that the length check in WriteJSON reports): the status line is
	// out, so all that is left is to cut the response short.
	if err := write(w); err != nil {
		a.cfg.Logger.Debug("Writing http_sd response failed", "err", err)
	}
	return consumer, shard, http.StatusOK
}

// consumer authenticates an http_sd reader and names it for the consumer
// log: "cert:<name>" or "token:<id>". With anonymous http_sd, a request
// without credentials, or with credentials that do not verify, is
// "anonymous" and served all the same.
func (a *API) consumer(r *http.Request) (string, error) {
	if a.cfg.AnonymousSD && r.Header.Get("Authorization") == "" && (r.TLS == nil || len(r.TLS.PeerCertificates) == 0) {
		return httpsd.ConsumerAnonymous, nil
	}
	id, err := a.auth.reader(r, ca.ScopeDiscovery, ca.RoleDiscovery, ca.RoleAdmin)
	switch {
	case err != nil && a.cfg.AnonymousSD:
		return httpsd.ConsumerAnonymous, nil
	case err != nil:
		return "", err
	case id.claims != nil:
		return "token:" + id.id, nil
	default:
		return "cert:" + id.id, nil
	}
}
