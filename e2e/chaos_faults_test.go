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
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// The faults of the chaos harness. Each injects, undoes and measures its
// recovery, returning the event; the lanes of chaos_test.go run them in
// turn, so that faults of the server lane overlap those of the agent lane.

// execOutput runs bin and returns its combined output.
func execOutput(ctx context.Context, bin string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// faultKill SIGKILLs server i and starts it again right away, as systemd
// would; the recovery is from the kill until /-/ready answers.
func (c *chaos) faultKill(i int) func(context.Context, int) faultEvent {
	return func(ctx context.Context, _ int) faultEvent {
		s := c.servers[i]
		e := faultEvent{Target: "server " + s.name, Start: time.Now()}
		s.setFaulty(true)
		defer s.setFaulty(false)
		if err := s.current().kill(); err != nil {
			e.Err = err.Error()
			return e
		}
		if _, err := s.relaunch(ctx); err != nil {
			e.Err = err.Error()
			c.violate("server %s did not come back after SIGKILL: %v", s.name, err)
		}
		e.Recovery = time.Since(e.Start)
		return e
	}
}

// faultFreeze SIGSTOPs server i for the freeze time, then SIGCONTs it; the
// recovery is from SIGCONT until /-/ready answers.
func (c *chaos) faultFreeze(i int) func(context.Context, int) faultEvent {
	return func(ctx context.Context, _ int) faultEvent {
		s := c.servers[i]
		e := faultEvent{Target: "server " + s.name, Start: time.Now()}
		s.setFaulty(true)
		defer s.setFaulty(false)
		p := s.current()
		if err := p.signal(syscall.SIGSTOP); err != nil {
			e.Err = err.Error()
			return e
		}
		sleepCtx(ctx, c.cfg.Freeze)
		if err := p.signal(syscall.SIGCONT); err != nil {
			e.Err = err.Error()
			return e
		}
		cont := time.Now()
		if err := s.waitReadyCtx(ctx, startTimeout); err != nil {
			e.Err = err.Error()
			c.violate("server %s not ready after SIGCONT: %v", s.name, err)
		}
		e.Recovery = time.Since(cont)
		return e
	}
}

// faultRestart stops server i with SIGTERM and starts it again while the
// simulated fleet heartbeats; the recovery is from SIGTERM until ready.
func (c *chaos) faultRestart(i int) func(context.Context, int) faultEvent {
	return func(ctx context.Context, _ int) faultEvent {
		s := c.servers[i]
		e := faultEvent{Target: "server " + s.name, Start: time.Now()}
		s.setFaulty(true)
		defer s.setFaulty(false)
		if err := s.current().terminate(stopTimeout); err != nil {
			c.violate("server %s: graceful stop under load: %v", s.name, err)
		}
		if _, err := s.relaunch(ctx); err != nil {
			e.Err = err.Error()
			c.violate("server %s did not come back after a restart: %v", s.name, err)
		}
		e.Recovery = time.Since(e.Start)
		return e
	}
}

// faultDiskFull fills the filesystem under the bolt data directory for
// the freeze time. bolt reuses the pages it has written, so a full
// filesystem alone refuses nothing while bolt has free pages: ballast
// registrations of the largest size the API takes (64 labels of 1 KiB,
// which bolt stores in runs of contiguous pages) eat them until one needs
// new space, which must be refused with 503 and a reason. Meanwhile http_sd
// and heartbeats of known agents must work; once the space is back, a
// registration must succeed without a restart. The recovery is from
// freeing the space until that registration. The ballast is revoked
// afterwards, so that it leaves http_sd; its records stay, as every
// acknowledged registration must.
func (c *chaos) faultDiskFull(ctx context.Context, _ int) faultEvent {
	s := c.servers[0]
	e := faultEvent{Target: "server a", Start: time.Now()}
	filler := filepath.Join(c.diskDir, "filler")
	pid := s.pid()
	n, err := fillDisk(filler)
	if err != nil {
		e.Err = err.Error()
		_ = os.Remove(filler)
		return e
	}
	end := time.Now().Add(c.cfg.Freeze)
	var (
		ballast                       []*testAgent
		refused, accepted, sdOK, hbOK int
		refusedAt                     time.Duration
	)
	for refused == 0 && len(ballast) < maxBallast && time.Now().Before(end) {
		if !s.available() {
			sleepCtx(ctx, time.Second)
			continue
		}
		a, err := c.probeRegisterLabels(ctx, s, ballastLabels())
		switch {
		case err == nil:
			ballast = append(ballast, a)
		case strings.Contains(err.Error(), "status 503"):
			refused++
			refusedAt = time.Since(e.Start)
		default:
			sleepCtx(ctx, time.Second)
		}
	}
	for ; time.Now().Before(end); sleepCtx(ctx, time.Second) {
		if !s.available() {
			continue // the other lane's fault
		}
		switch err := c.probeRegister(ctx, s); {
		case err == nil:
			accepted++
		case strings.Contains(err.Error(), "status 503"):
			refused++
		}
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		sd, err := doRequest(rctx, c.sd, http.MethodGet, s.URL+protocol.PathDiscovery, "", nil)
		if s.available() && (err != nil || sd.Status != http.StatusOK) {
			c.violate("disk full: http_sd failed: %v %s", err, statusOf(sd))
		} else if err == nil {
			sdOK++
		}
		if a := c.knownProbe(); a != nil {
			hb, err := doRequest(rctx, a.Client, http.MethodPost, s.URL+protocol.PathHeartbeat, "", map[string]string{"status": "ok"})
			if s.available() && (err != nil || hb.Status != http.StatusOK) {
				c.violate("disk full: heartbeat of known agent %s failed: %v %s", a.ID, err, statusOf(hb))
			} else if err == nil {
				hbOK++
			}
		}
		cancel()
	}
	if err := os.Remove(filler); err != nil {
		e.Err = err.Error()
		return e
	}
	freed := time.Now()
	rec, err := recoverWithin(ctx, freed, startTimeout, func() error {
		if !s.available() {
			return fmt.Errorf("server a is under another fault")
		}
		return c.probeRegister(ctx, s)
	})
	e.Recovery = rec
	if err != nil {
		e.Err = err.Error()
		c.violate("no registration succeeded after the disk had space again: %v", err)
	}
	unrevoked := 0
	for _, a := range ballast {
		c.mu.Lock()
		done := c.revoked[a.ID]
		c.mu.Unlock()
		if done {
			continue
		}
		if _, err := recoverWithin(ctx, time.Now(), startTimeout, func() error {
			if !s.available() || !c.revokeAndHeartbeat(ctx, s, a) {
				return fmt.Errorf("revocation of ballast agent %s not acknowledged", a.ID)
			}
			return nil
		}); err != nil {
			unrevoked++
		}
	}
	restarted := ""
	if s.pid() != pid {
		restarted = " (the server was restarted meanwhile by the other lane)"
	}
	reached := "first 503 after " + refusedAt.Round(100*time.Millisecond).String()
	if refused == 0 {
		reached = "NO 503"
		if e.Err == "" {
			// The fault was not injected: the disk was never full for
			// bolt.
			e.Err = fmt.Sprintf("disk full never reached: %d ballast registrations accepted within %s", len(ballast), c.cfg.Freeze)
		}
	}
	e.Note = fmt.Sprintf("filled %d MiB; %d ballast registrations (%d KiB each) accepted, %s; then registrations %d refused 503 in all, %d accepted; http_sd ok %d, heartbeats ok %d; ballast not revoked %d%s",
		n>>20, len(ballast), ballastBytes>>10, reached, refused, accepted, sdOK, hbOK, unrevoked, restarted)
	return e
}

// maxBallast bounds the ballast registrations of one disk-full fault.
const maxBallast = 200

// ballastBytes is about the size of one ballast registration's labels.
const ballastBytes = protocol.MaxLabels * (16 + protocol.MaxLabelValueLen)

// ballastLabels returns the largest label set a registration may carry,
// with random values so that nothing compresses or deduplicates it.
func ballastLabels() map[string]string {
	labels := make(map[string]string, protocol.MaxLabels)
	for i := range protocol.MaxLabels {
		labels[fmt.Sprintf("ballast_%02d", i)] = strings.Repeat(rand.Text(), protocol.MaxLabelValueLen/26+1)[:protocol.MaxLabelValueLen]
	}
	return labels
}

// knownProbe returns an acknowledged probe agent that was not revoked and
// is not about to be: every fifth is revoked right after its registration,
// by another goroutine, and may be refused before it is marked revoked.
func (c *chaos) knownProbe() *testAgent {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.acked) - 1; i >= 0; i-- {
		if id := c.acked[i]; !c.revoked[id] && (i+1)%5 != 0 {
			return c.probes[id]
		}
	}
	return nil
}

// waitUp waits until Prometheus has up == 1 for the agent itself and, if
// node, for its node exporter too.
func (c *chaos) waitUp(ctx context.Context, a *chaosAgent, since time.Time, node bool) (time.Duration, error) {
	return recoverWithin(ctx, since, 3*c.heartbeatGrace+startTimeout, func() error {
		up, err := c.upByAgent(ctx)
		if err != nil {
			return err
		}
		// A scrape after the fault, not one from before it.
		return c.agentUp(up, a, since, node)
	})
}

// lastSeen returns when server s last saw agent id.
func (c *chaos) lastSeen(ctx context.Context, s *chaosServer, id string) (time.Time, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := doRequest(rctx, s.anon, http.MethodGet, s.URL+protocol.PathAgents, c.adminTok, nil)
	if err != nil {
		return time.Time{}, err
	}
	if resp.Status != http.StatusOK {
		return time.Time{}, fmt.Errorf("agent list: status %d", resp.Status)
	}
	var views []discovery.AgentView
	if err := json.Unmarshal(resp.Body, &views); err != nil {
		return time.Time{}, err
	}
	for _, v := range views {
		if v.ID == id {
			return v.LastSeen, nil
		}
	}
	return time.Time{}, fmt.Errorf("agent %s not listed", id)
}

// agentLane is the faults on the real agents, each on the next agent in
// turn; with certExpiry also a certificate that expires during a
// partition.
func (c *chaos) agentLane(certExpiry bool) []fault {
	pick := func(k, offset int) *chaosAgent { return c.agents[(k+offset)%len(c.agents)] }
	cut := func(ctx context.Context, k int) faultEvent {
		a := pick(k, 0)
		e := faultEvent{Target: a.Hostname, Start: time.Now()}
		a.setNetFault(true)
		if err := a.net.setLink(false); err != nil {
			a.setNetFault(false)
			e.Err = err.Error()
			return e
		}
		sleepCtx(ctx, c.cfg.Cut)
		err := a.net.setLink(true)
		restored := time.Now()
		a.setNetFault(false)
		if err != nil {
			e.Err = err.Error()
			return e
		}
		rec, err := c.waitUp(ctx, a, restored, true)
		e.Recovery = rec
		if err != nil {
			e.Err = err.Error()
		} else if rec > c.heartbeatGrace {
			c.violate("agent %s scraped again %s after its network came back, more than a heartbeat, an http_sd refresh and a scrape interval (%s)", a.Hostname, rec, c.heartbeatGrace)
		}
		return e
	}
	degrade := func(f proxyFaults, offset int) func(context.Context, int) faultEvent {
		return func(ctx context.Context, k int) faultEvent {
			a := pick(k, offset)
			e := faultEvent{Target: a.Hostname, Start: time.Now()}
			if certExpiry {
				// With a certificate lifetime this short, a renewal the
				// fault holds up lets the certificate expire: the agent
				// is then out of http_sd and unscrapable as during a cut.
				// The bolt scenario (24h certificates) checks degraded
				// agents strictly.
				a.setNetFault(true)
			}
			for _, p := range a.toServer {
				p.setFaults(f)
			}
			sleepCtx(ctx, c.cfg.Cut)
			for _, p := range a.toServer {
				p.setFaults(proxyFaults{})
			}
			lifted := time.Now()
			if certExpiry {
				a.setNetFault(false)
			}
			// The agent's next heartbeat after the fault: it must not be
			// stuck in a backoff or on a dead connection.
			rec, err := recoverWithin(ctx, lifted, 3*c.heartbeatGrace+startTimeout, func() error {
				for _, s := range c.servers {
					if !s.available() {
						continue
					}
					seen, err := c.lastSeen(ctx, s, a.ID)
					if err != nil {
						return err
					}
					if seen.After(lifted) {
						return nil
					}
				}
				return fmt.Errorf("agent %s not seen since the fault was lifted", a.Hostname)
			})
			e.Recovery = rec
			if err != nil {
				e.Err = err.Error()
			}
			e.Note = "recovery: until the next heartbeat arrives"
			return e
		}
	}
	flap := func(ctx context.Context, k int) faultEvent {
		a := pick(k, 3)
		e := faultEvent{Target: a.Hostname + " node_exporter", Start: time.Now()}
		a.setNodeFault(true)
		for range 3 {
			_ = a.nodeProc().kill()
			sleepCtx(ctx, time.Second)
			if err := a.startNode(); err != nil {
				e.Err = err.Error()
			}
			sleepCtx(ctx, 2*time.Second)
		}
		restored := time.Now()
		a.setNodeFault(false)
		rec, err := c.waitUp(ctx, a, restored, true)
		e.Recovery = rec
		if err != nil {
			e.Err = err.Error()
		}
		return e
	}
	hang := func(ctx context.Context, k int) faultEvent {
		a := pick(k, 4)
		e := faultEvent{Target: a.Hostname + " node_exporter", Start: time.Now()}
		a.setNodeFault(true)
		p := a.nodeProc()
		_ = p.signal(syscall.SIGSTOP)
		sleepCtx(ctx, c.cfg.Freeze)
		_ = p.signal(syscall.SIGCONT)
		restored := time.Now()
		a.setNodeFault(false)
		rec, err := c.waitUp(ctx, a, restored, true)
		e.Recovery = rec
		if err != nil {
			e.Err = err.Error()
		}
		return e
	}
	faults := []fault{
		{"agent network cut (veth down, up)", cut},
		// Early in the lane, so that the short form has it too.
		{"relay configuration reloads under scrape load (SIGHUP: changed label, bad file, good file)", c.faultReload},
		{"agent to server: 300 ms delay per chunk", degrade(proxyFaults{Delay: 300 * time.Millisecond}, 1)},
		{"exporter flapping (killed, restarted 3 times)", flap},
		{"agent to server: 30 % of chunks reset the connection", degrade(proxyFaults{ResetProb: 0.3}, 2)},
		{"exporter hanging (SIGSTOP)", hang},
		{"agent to server: stalled (bytes held)", degrade(proxyFaults{Stall: true}, 1)},
	}
	if certExpiry {
		faults = append(faults, fault{"certificate expired during a partition", func(ctx context.Context, k int) faultEvent {
			a := pick(k, 2)
			e := faultEvent{Target: a.Hostname, Start: time.Now()}
			a.setNetFault(true)
			if err := a.net.setLink(false); err != nil {
				a.setNetFault(false)
				e.Err = err.Error()
				return e
			}
			notAfter, err := a.certNotAfter()
			if err == nil {
				// The partition lasts until the certificate has expired.
				sleepCtx(ctx, time.Until(notAfter)+2*time.Second)
			}
			err2 := a.net.setLink(true)
			restored := time.Now()
			a.setNetFault(false)
			if err != nil || err2 != nil {
				e.Err = fmt.Sprint(err, err2)
				return e
			}
			rec, err := c.waitUp(ctx, a, restored, true)
			e.Recovery = rec
			if err != nil {
				e.Err = err.Error()
				return e
			}
			if rec > c.heartbeatGrace {
				c.violate("agent %s scraped again %s after a partition that outlived its certificate, more than a heartbeat, an http_sd refresh and a scrape interval (%s)", a.Hostname, rec, c.heartbeatGrace)
			}
			// The agent serves the new certificate before it writes it to
			// its state directory: wait for the file.
			if _, err := recoverWithin(ctx, restored, startTimeout, func() error {
				na, err := a.certNotAfter()
				if err != nil {
					return err
				}
				if !na.After(notAfter) {
					return fmt.Errorf("certificate not renewed after the partition (not after %v)", na)
				}
				return nil
			}); err != nil {
				e.Err = err.Error()
			}
			e.Note = fmt.Sprintf("partition %s", restored.Sub(e.Start).Round(time.Second))
			return e
		}})
	}
	return faults
}
