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

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// The relay configuration reload fault: an agent re-reads its relay
// configuration (SIGHUP) while it is scraped hard, once with a changed
// label, once with a file that does not load, and once more to restore it.
// Its own up stays 1 (the agent is never exempted from the checks), and
// no scrape of the load may fail.

const (
	reloadGauge     = "baremetal_sd_agent_config_last_reload_successful"
	reloadTimestamp = "baremetal_sd_agent_config_last_reload_success_timestamp_seconds"
	// reloadScrapers scrape the agent back to back during the fault, with
	// reloadScrapePause between two scrapes of one scraper.
	reloadScrapers    = 2
	reloadScrapePause = 100 * time.Millisecond
)

// scrapeLoad scrapes the agent's node exporter through its relay until
// stop is called, which returns the number of scrapes and the failures.
func (c *chaos) scrapeLoad(ctx context.Context, a *chaosAgent) (stop func() (int, []string)) {
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		scrapes  int
		failures []string
	)
	url := "https://" + a.Addr + "/exporters/node/metrics"
	for range reloadScrapers {
		wg.Go(func() {
			for ctx.Err() == nil {
				err := scrapeOnce(ctx, c.scraper, url)
				if ctx.Err() != nil {
					return // cut short by stop, not failed
				}
				mu.Lock()
				scrapes++
				if err != nil && len(failures) < 20 {
					failures = append(failures, fmt.Sprintf("%s: %v", time.Since(c.faultStart).Round(time.Second), err))
				}
				mu.Unlock()
				sleepCtx(ctx, reloadScrapePause)
			}
		})
	}
	return func() (int, []string) {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return scrapes, failures
	}
}

// scrapeOnce fetches url in full, as Prometheus would within its scrape
// timeout, and fails unless it answers 200.
func scrapeOnce(ctx context.Context, client *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if n == 0 {
		return fmt.Errorf("empty body")
	}
	return nil
}

// agentMetric reads one unlabelled series of the agent's own metrics.
func (c *chaos) agentMetric(ctx context.Context, a *chaosAgent, name string) (float64, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := doRequest(rctx, c.scraper, http.MethodGet, "https://"+a.Addr+"/metrics", "", nil)
	if err != nil {
		return 0, err
	}
	if resp.Status != http.StatusOK {
		return 0, fmt.Errorf("agent metrics: status %d", resp.Status)
	}
	v, ok := metricValue(resp.Body, name)
	if !ok {
		return 0, fmt.Errorf("agent metrics: no %s", name)
	}
	return v, nil
}

// sdLabel returns the value of the agent label key that an available
// server's http_sd lists for agent id.
func (c *chaos) sdLabel(ctx context.Context, id, key string) (string, error) {
	for _, s := range c.servers {
		if !s.available() {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := doRequest(rctx, c.sd, http.MethodGet, s.URL+protocol.PathDiscovery, "", nil)
		cancel()
		if err != nil || resp.Status != http.StatusOK {
			continue
		}
		groups, err := checkSDBody(resp.Body)
		if err != nil {
			return "", err
		}
		for _, g := range groups {
			if g.Labels[protocol.MetaAgentID] == id {
				return g.Labels[protocol.MetaLabelPrefix+key], nil
			}
		}
		return "", fmt.Errorf("agent %s not in http_sd of server %s", id, s.name)
	}
	return "", fmt.Errorf("no server available")
}

// faultReload reloads agent a's relay configuration three times under
// scrape load: a changed label, a file that does not load (the running
// configuration must stay), and the good file again. The recovery is from
// the first SIGHUP until http_sd lists the changed label.
func (c *chaos) faultReload(ctx context.Context, k int) faultEvent {
	a := c.agents[k%len(c.agents)]
	e := faultEvent{Target: a.Hostname, Start: time.Now()}
	gen := strconv.Itoa(k + 1)
	stop := c.scrapeLoad(ctx, a)
	fail := func(format string, args ...any) faultEvent {
		if scrapes, failures := stop(); len(failures) > 0 {
			c.violate("agent %s: %d of %d scrapes failed during relay configuration reloads: %v", a.Hostname, len(failures), scrapes, failures)
		}
		e.Err = fmt.Sprintf(format, args...)
		return e
	}
	reload := func(gen string) error {
		if err := a.writeRelayConfig(gen); err != nil {
			return err
		}
		return a.agentProc().signal(syscall.SIGHUP)
	}
	// waitReload waits until the agent reports the outcome want (1 a
	// reload that took, 0 one that kept the old configuration) of a reload
	// after since.
	waitReload := func(since time.Time, want float64) error {
		_, err := recoverWithin(ctx, since, startTimeout, func() error {
			ok, err := c.agentMetric(ctx, a, reloadGauge)
			if err != nil {
				return err
			}
			at, err := c.agentMetric(ctx, a, reloadTimestamp)
			if err != nil {
				return err
			}
			if ok != want || want == 1 && at < float64(since.Unix()) {
				return fmt.Errorf("%s %v, last success at %v, want %v after %v", reloadGauge, ok, at, want, since.Unix())
			}
			return nil
		})
		return err
	}

	// A changed label: the agent registers it at once.
	hup := time.Now()
	if err := reload(gen); err != nil {
		return fail("reload: %v", err)
	}
	if err := waitReload(hup.Truncate(time.Second), 1); err != nil {
		return fail("reload with label reload=%s: %v", gen, err)
	}
	rec, err := recoverWithin(ctx, hup, 3*c.heartbeatGrace+startTimeout, func() error {
		v, err := c.sdLabel(ctx, a.ID, "reload")
		if err != nil {
			return err
		}
		if v != gen {
			return fmt.Errorf("http_sd lists reload=%q, want %q", v, gen)
		}
		return nil
	})
	e.Recovery = rec
	if err != nil {
		return fail("changed label: %v", err)
	}

	// A file that does not load: the running configuration stays.
	if err := os.WriteFile(a.RelayConfig, []byte("exporters:\n  - name: node\n    url: http://"+a.NodeAddr+"/metrics\n    no_such_key: 1\n"), 0o600); err != nil {
		return fail("write bad relay configuration: %v", err)
	}
	if err := a.agentProc().signal(syscall.SIGHUP); err != nil {
		return fail("reload: %v", err)
	}
	if err := waitReload(time.Now(), 0); err != nil {
		return fail("reload of a bad file: %v", err)
	}
	// Scrapes go on meanwhile (the load); the label must not change.
	sleepCtx(ctx, 2*c.cfg.Scrape)
	if v, err := c.sdLabel(ctx, a.ID, "reload"); err == nil && v != gen {
		c.violate("agent %s: after a reload of a bad file, http_sd lists reload=%q, want the running configuration's %q", a.Hostname, v, gen)
	}

	// The good file again.
	hup = time.Now()
	if err := reload(gen); err != nil {
		return fail("reload: %v", err)
	}
	if err := waitReload(hup.Truncate(time.Second), 1); err != nil {
		return fail("reload after the bad file: %v", err)
	}
	scrapes, failures := stop()
	if len(failures) > 0 {
		c.violate("agent %s: %d of %d scrapes failed during relay configuration reloads: %v", a.Hostname, len(failures), scrapes, failures)
	}
	e.Note = fmt.Sprintf("3 reloads (1 of a bad file), %d scrapes under load, %d failed", scrapes, len(failures))
	return e
}
