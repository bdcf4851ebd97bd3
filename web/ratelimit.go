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
	"crypto/sha256"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxRateClients bounds each table of per-client limiters. A limiter whose
// bucket has refilled is as good as a new one and is dropped when a table is
// full; see clientLimits.admit.
const maxRateClients = 1 << 16

// sweepEvery throttles the sweeps of a full table, so that a flood of new
// clients cannot make every request walk the table.
const sweepEvery = time.Second

// clientLimits is the web config's rate_limit applied per client rather than
// to the server as a whole, where a flood from anyone used up the budget of
// everyone and agents' heartbeats failed with 429.
//
// Clients that presented a certificate the TLS layer verified against the
// web config's client_ca_file are keyed by that certificate, in a table of
// their own; everyone else is keyed by source address (an IPv6 client by
// its /64, which one host usually has whole). Unauthenticated traffic thus
// never spends an authenticated client's budget, nor its table space: when
// the anonymous table is full of clients still within their budget, new
// anonymous clients are refused, while a full table of authenticated clients
// makes room by forgetting one (which only hands it a full bucket).
type clientLimits struct {
	limit rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu        sync.Mutex
	anonymous limiterTable
	verified  limiterTable
}

// limiterTable is one table of per-client limiters.
type limiterTable struct {
	limiters  map[string]*rate.Limiter
	lastSweep time.Time
	// evict says whether a full table forgets a client to admit a new one
	// (true) or refuses the new one (false).
	evict bool
}

func newClientLimits(interval time.Duration, burst int) *clientLimits {
	return &clientLimits{
		limit:     rate.Every(interval),
		burst:     burst,
		max:       maxRateClients,
		now:       time.Now,
		anonymous: limiterTable{limiters: make(map[string]*rate.Limiter)},
		verified:  limiterTable{limiters: make(map[string]*rate.Limiter), evict: true},
	}
}

// allow reports whether the request's client is within its budget, and
// spends one request of it.
func (c *clientLimits) allow(r *http.Request) bool {
	verified, key := rateKey(r)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &c.anonymous
	if verified {
		t = &c.verified
	}
	lim, ok := t.limiters[key]
	if !ok {
		if !c.admit(t, now) {
			return false
		}
		lim = rate.NewLimiter(c.limit, c.burst)
		t.limiters[key] = lim
	}
	return lim.AllowN(now, 1)
}

// admit makes room for one more client in t, if it can.
func (c *clientLimits) admit(t *limiterTable, now time.Time) bool {
	if len(t.limiters) < c.max {
		return true
	}
	if now.Sub(t.lastSweep) >= sweepEvery {
		t.lastSweep = now
		for k, lim := range t.limiters {
			if lim.TokensAt(now) >= float64(c.burst) {
				delete(t.limiters, k) // refilled: a new limiter is the same
			}
		}
		if len(t.limiters) < c.max {
			return true
		}
	}
	if !t.evict {
		return false
	}
	for k := range t.limiters { // Go's map order: an arbitrary client
		delete(t.limiters, k)
		break
	}
	return true
}

// rateKey names the client a request counts against: its verified client
// certificate, or else its source address.
func rateKey(r *http.Request) (verified bool, key string) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		sum := sha256.Sum256(r.TLS.VerifiedChains[0][0].Raw)
		return true, string(sum[:])
	}
	return false, clientAddr(r.RemoteAddr)
}

// clientAddr is the source address of a request, an IPv6 address cut to
// its /64.
func clientAddr(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	addr = addr.Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}
