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

package web

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"
	"sync"

	toolkitweb "github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/crypto/bcrypt"
)

// fakeHash is compared against for unknown users, so that a wrong user
// name takes as long as a wrong password and does not reveal which users
// exist. It is a bcrypt hash of a random string nobody knows.
const fakeHash = "$2a$10$8TVY9YOso3l4uYM6.7IF2erV5Ahpxkhi1yDiZnOI8zDeRSVqFP7Hm"

// maxAuthCache bounds remembered bcrypt results; when full it is emptied.
const maxAuthCache = 1024

func checkHash(h string) error {
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return errors.New("basic_auth_users needs bcrypt hashes")
	}
	return nil
}

// authHandler applies the web config's response headers, rate limit and
// basic auth to every request, as the toolkit does, reading the config from
// the cache instead of parsing it per request.
type authHandler struct {
	cache *configCache
	next  http.Handler
	// limits is the web config's rate_limit, per client; nil when off.
	limits *clientLimits
	logger *slog.Logger
	// protect selects the requests basic auth applies to; nil means all.
	protect func(*http.Request) bool

	// bcryptMu serializes bcrypt: it is slow on purpose, and a burst of
	// bad passwords must not eat every core.
	bcryptMu sync.Mutex
	mu       sync.Mutex
	results  map[[32]byte]bool
}

func newAuthHandler(cache *configCache, next http.Handler, cfg *toolkitweb.Config, logger *slog.Logger, protect func(*http.Request) bool) *authHandler {
	h := &authHandler{cache: cache, next: next, logger: logger, protect: protect, results: make(map[[32]byte]bool)}
	if rl := cfg.RateLimiterConfig; rl.Interval != 0 {
		h.limits = newClientLimits(rl.Interval, rl.Burst)
		logger.Info("Rate limiter is enabled, per client", "burst", rl.Burst, "interval", rl.Interval)
	}
	return h
}

func (h *authHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cfg, err := h.cache.config()
	if err != nil {
		h.logger.Error("Unable to load web config", "err", err)
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	if h.limits != nil && !h.limits.allow(r) {
		http.Error(w, http.StatusText(http.StatusTooManyRequests), http.StatusTooManyRequests)
		return
	}
	for k, v := range cfg.HTTPConfig.Header {
		w.Header().Set(k, v)
	}
	if len(cfg.Users) == 0 || (h.protect != nil && !h.protect(r)) {
		h.next.ServeHTTP(w, r)
		return
	}
	if user, pass, ok := r.BasicAuth(); ok && h.authorized(cfg, user, pass) {
		h.next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), basicAuthUserKey{}, user)))
		return
	}
	w.Header().Set("WWW-Authenticate", "Basic")
	http.Error(w, http.StatusText(http.StatusUnauthorized), http.StatusUnauthorized)
}

type basicAuthUserKey struct{}

// BasicAuthUser returns the user a request authenticated as with the web
// config's basic_auth_users, if it did.
func BasicAuthUser(r *http.Request) (string, bool) {
	user, ok := r.Context().Value(basicAuthUserKey{}).(string)
	return user, ok
}

// ServeOption changes how Serve, ServeListeners and ListenAndServe apply the
// web config.
type ServeOption func(*serveOptions)

type serveOptions struct {
	protect    func(*http.Request) bool
	handshakes int
}

func newServeOptions(opts []ServeOption) serveOptions {
	var o serveOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithBasicAuthScope limits the web config's basic_auth_users to the
// requests protect selects; the others pass without basic auth.
// exporter-toolkit guards every request, which would lock out clients that
// authenticate otherwise: the discovery server's agents and Prometheus use
// client certificates and bearer tokens, and a bearer token travels in the
// same Authorization header as basic auth.
func WithBasicAuthScope(protect func(*http.Request) bool) ServeOption {
	return func(o *serveOptions) { o.protect = protect }
}

func (h *authHandler) authorized(cfg *toolkitweb.Config, user, pass string) bool {
	hash, known := cfg.Users[user]
	if !known {
		hash = fakeHash
	}
	// The key covers the hash too, so a changed password in the config is
	// never answered from the cache.
	key := sha256.Sum256([]byte(user + "\x00" + string(hash) + "\x00" + pass))
	h.mu.Lock()
	ok, cached := h.results[key]
	h.mu.Unlock()
	if !cached {
		h.bcryptMu.Lock()
		ok = bcrypt.CompareHashAndPassword([]byte(hash), []byte(pass)) == nil
		h.bcryptMu.Unlock()
		h.mu.Lock()
		if len(h.results) >= maxAuthCache {
			clear(h.results)
		}
		h.results[key] = ok
		h.mu.Unlock()
	}
	return ok && known
}
