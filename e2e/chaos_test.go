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
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// The chaos harness: a small realistic fleet under a schedule of
// overlapping faults, with the invariants of RELIABILITY.md checked every
// few seconds throughout. `go test` runs the short form (about two minutes
// per scenario, both in parallel); `make chaos` runs the long form,
// CHAOS_DURATION=1h for an hour of faults per scenario. See RELIABILITY.md
// for what it measured.

// chaosConfig sizes one run.
type chaosConfig struct {
	Long bool
	// Duration is how long faults are injected; Warmup runs the fleet
	// without faults first, and resource slopes start after it.
	Duration, Warmup time.Duration
	// SimAgents heartbeat from the load generator every SimInterval in the
	// bolt scenario. The etcd scenario runs a tenth of them at its agents'
	// pace through the replica no fault touches, which signs them
	// certificates for a day: they cannot renew, which the faulted
	// replicas' short --cert.ttl would need.
	SimAgents   int
	SimInterval time.Duration
	// Freeze is how long SIGSTOP, disk full and a hung exporter last; Cut
	// how long an agent's network is down or degraded.
	Freeze, Cut time.Duration
	// Pause separates two faults of one fault lane.
	Pause time.Duration
	// CheckEvery paces the invariant checks, SampleEvery the resource
	// samples.
	CheckEvery, SampleEvery time.Duration
	// Scrape is Prometheus' scrape and http_sd refresh interval.
	Scrape time.Duration
}

// chaosConfigFromEnv reads CHAOS_DURATION (a Go duration: the long form)
// or returns the short form.
func chaosConfigFromEnv(t *testing.T) chaosConfig {
	t.Helper()
	c := chaosConfig{
		Duration: 80 * time.Second, Warmup: 15 * time.Second,
		SimAgents: 500, SimInterval: 75 * time.Second,
		Freeze: 6 * time.Second, Cut: 8 * time.Second, Pause: 2 * time.Second,
		CheckEvery: 2 * time.Second, SampleEvery: 5 * time.Second, Scrape: 5 * time.Second,
	}
	if v := os.Getenv("CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			t.Fatalf("CHAOS_DURATION=%q: want a duration of at least 1m (%v)", v, err)
		}
		c = chaosConfig{
			Long:     true,
			Duration: d, Warmup: time.Minute,
			SimAgents: 5000, SimInterval: 75 * time.Second,
			Freeze: 30 * time.Second, Cut: 30 * time.Second, Pause: 15 * time.Second,
			CheckEvery: 3 * time.Second, SampleEvery: 15 * time.Second, Scrape: 5 * time.Second,
		}
	}
	if v := os.Getenv("CHAOS_SIM_AGENTS"); v != "" {
		if _, err := fmt.Sscan(v, &c.SimAgents); err != nil {
			t.Fatalf("CHAOS_SIM_AGENTS=%q: %v", v, err)
		}
	}
	// go test's -timeout panics without running cleanups, which would
	// leave namespaces, a mount and processes behind: refuse a run that
	// cannot end by itself first.
	if deadline, ok := t.Deadline(); ok && time.Until(deadline) < c.Warmup+c.Duration+5*time.Minute {
		t.Fatalf("-timeout leaves %s, the run needs %s and up to 5m to set up and settle: raise -timeout", time.Until(deadline).Round(time.Second), c.Warmup+c.Duration)
	}
	return c
}

// faultEvent is one injected fault.
type faultEvent struct {
	Name     string
	Target   string
	Start    time.Time
	Recovery time.Duration // from the fault's end to the recovery it defines
	Err      string        // set if it did not recover
	Note     string
}

// resSample is one resource sample of one process.
type resSample struct {
	At         time.Time
	PID        int
	RSS        int64
	FDs        int
	Goroutines float64
}

// chaos is one run: fleet, faults, checks, results.
type chaos struct {
	t       *testing.T
	cfg     chaosConfig
	servers []*chaosServer
	agents  []*chaosAgent
	prom    *testPrometheus
	// faulted is how many of servers the fault lanes act on (the first
	// ones); the others are never faulted: their resource slopes run over
	// the whole run.
	faulted int
	// jobs are Prometheus' scrape jobs of the real agents, each
	// discovering through one server: "chaos" through server a and, in the
	// etcd scenario, "chaos-c" through the replica no fault touches.
	jobs []string
	// Credentials: discovery certificate (reads http_sd, scrapes agents),
	// admin and enrollment tokens.
	sd        *http.Client
	scraper   *http.Client // scrapes the agents as Prometheus does
	adminTok  string
	enrollTok string
	// heartbeatGrace is how long after a fault an agent may take to be
	// scraped again: one heartbeat interval, one http_sd refresh and one
	// scrape interval (and, with replicas, one heartbeat flush).
	heartbeatGrace time.Duration
	ttl            time.Duration // the servers' --agent.ttl
	faultStart     time.Time
	diskDir        string // the tmpfs under the bolt data directory, or ""

	mu     sync.Mutex
	events []faultEvent
	// violations by message: a violation the checks find again and again
	// (an agent missing at every check) is one entry with its count, so
	// that it does not crowd out the others.
	violations map[string]*violation
	acked      []string              // acknowledged registrations
	revoked    map[string]bool       // revoked agents
	probes     map[string]*testAgent // acked agents with their keys
	samples    map[string][]resSample
	regStatus  map[string]map[int]int // registration replies by phase
	checks     int
	// revocationLag: how long another replica accepted a revoked agent's
	// heartbeats after the revocation was acknowledged.
	revocationLag []time.Duration
	// upFailedAt: the time of a target's failed scrape, while the next
	// one is awaited (only the checking goroutine uses it).
	upFailedAt          map[string]time.Time
	singleFailedScrapes int
	// checkLatency: how long the checks' requests took, by server; slow:
	// what the server's threads did during the slow ones.
	checkLatency map[string][]time.Duration
	slow         []string
	// serverTimings: the servers' own latency histograms at the end.
	serverTimings []string
	// loads: the machine's 1-minute load average at each resource sample.
	loads []float64
	// diagnosed: when an agent's gap was last diagnosed; diagnostics: what
	// the servers and Prometheus said then (see diagnose).
	diagnosed   map[string]time.Time
	diagnostics []string
}

// violation is one kind of invariant violation: when the checks found it
// first and last (since the run began), and how often.
type violation struct {
	first, last time.Duration
	count       int
}

// maxViolationKinds bounds the distinct violations a run keeps.
const maxViolationKinds = 200

// violate records an invariant violation.
func (c *chaos) violate(format string, args ...any) {
	at := time.Since(c.faultStart).Round(time.Second)
	msg := fmt.Sprintf(format, args...)
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.violations[msg]; ok {
		v.last = at
		v.count++
		return
	}
	if len(c.violations) >= maxViolationKinds {
		msg = "more kinds of violations than the report keeps"
		if v, ok := c.violations[msg]; ok {
			v.last = at
			v.count++
			return
		}
	}
	c.violations[msg] = &violation{first: at, last: at, count: 1}
}

// violationLines describes the violations in the order they were first
// found, each once, with how often and until when it was found again. The
// caller holds mu.
func (c *chaos) violationLines() []string {
	msgs := slices.SortedFunc(maps.Keys(c.violations), func(x, y string) int {
		return cmp.Or(cmp.Compare(c.violations[x].first, c.violations[y].first), strings.Compare(x, y))
	})
	lines := make([]string, 0, len(msgs))
	for _, m := range msgs {
		v := c.violations[m]
		line := fmt.Sprintf("%s: %s", v.first, m)
		if v.count > 1 {
			line += fmt.Sprintf(" (found %d times, last at %s)", v.count, v.last)
		}
		lines = append(lines, line)
	}
	return lines
}

// record adds a fault event.
func (c *chaos) record(e faultEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, e)
}

// recoverWithin polls cond until it holds or timeout passes and returns
// how long that took from since.
func recoverWithin(ctx context.Context, since time.Time, timeout time.Duration, cond func() error) (time.Duration, error) {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return time.Since(since), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Since(since), fmt.Errorf("not recovered after %s: %w", time.Since(since).Round(time.Second), err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// sleepCtx pauses for d unless ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// fault is one kind of fault: it injects, undoes and measures recovery,
// recording its own event. k counts the faults of its lane, to rotate
// targets.
type fault struct {
	name string
	run  func(ctx context.Context, k int) faultEvent
}

// runLane injects the faults of a lane in turn, pausing between them,
// until ctx ends; a fault under way is finished (undone) first.
func (c *chaos) runLane(ctx context.Context, faults []fault) {
	for k := 0; ctx.Err() == nil; k++ {
		f := faults[k%len(faults)]
		// Faults must always be undone: they run to the end on a
		// context of their own, bounded by their own timeouts.
		e := f.run(context.WithoutCancel(ctx), k/len(faults))
		e.Name = f.name
		if e.Err != "" {
			// A fault that could not be injected or undone, or whose
			// target never came back, breaks the run however the
			// periodic checks fared.
			c.violate("%s on %s: not recovered: %s", e.Name, e.Target, e.Err)
		}
		c.record(e)
		sleepCtx(ctx, c.cfg.Pause)
	}
}

func TestChaos_Bolt(t *testing.T) {
	t.Parallel()
	cfg := chaosConfigFromEnv(t)
	lab := newNetLab(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	// A small filesystem of its own under the data directory, to fill.
	mountTmpfs(t, dataDir, 64<<20)
	c := newChaos(t, cfg, lab, []string{"--data.dir=" + dataDir, "--agent.ttl=5m"}, false)
	c.diskDir = dataDir
	c.startSimFleet(c.servers[0], cfg.SimAgents, cfg.SimInterval)

	serverLane := []fault{
		{"server SIGKILL", c.faultKill(0)},
		{"server SIGSTOP", c.faultFreeze(0)},
		{"disk full under the bolt data directory", c.faultDiskFull},
		{"server restart while the simulated fleet heartbeats", c.faultRestart(0)},
	}
	c.run(serverLane, c.agentLane(false))
}

func TestChaos_Etcd(t *testing.T) {
	t.Parallel()
	cfg := chaosConfigFromEnv(t)
	requireEtcdSupport(t)
	lab := newNetLab(t)
	etcd := startEtcdCluster(t, 3)
	// A short certificate lifetime, so that one expires during a
	// partition; heartbeats every 10 s.
	certTTL := 30 * time.Second
	if cfg.Long {
		certTTL = 45 * time.Second
	}
	args := []string{"--storage.backend=etcd", "--etcd.prefix=/chaos/", "--agent.ttl=40s", "--cert.ttl=" + certTTL.String()}
	for _, ep := range etcd.Endpoints() {
		args = append(args, "--etcd.endpoints="+ep)
	}
	c := newChaos(t, cfg, lab, args, true)
	// The simulated fleet heartbeats through the replica no fault touches,
	// at the real agents' pace (a tenth of the bolt scenario's fleet, which
	// heartbeats 7.5 times less often): the faulted replicas learn its
	// heartbeats from that replica's flushes, and load them at every
	// restart.
	c.startSimFleet(c.servers[2], cfg.SimAgents/10, c.ttl/4)

	serverLane := []fault{
		{"replica SIGKILL", func(ctx context.Context, k int) faultEvent { return c.faultKill(k%2)(ctx, k) }},
		{"etcd member SIGKILL", func(ctx context.Context, k int) faultEvent {
			i := k % 3
			e := faultEvent{Target: fmt.Sprintf("etcd member %d", i), Start: time.Now()}
			etcd.Kill(i)
			// Writes must go on with two of three members: the recovery
			// time is from the kill to the first acknowledged write.
			rec, err := recoverWithin(ctx, e.Start, startTimeout, func() error { return c.probeRegister(ctx, c.servers[k%2]) })
			e.Recovery = rec
			if err != nil {
				e.Err = err.Error()
				c.violate("no write acknowledged with etcd member %d down: %v", i, err)
			}
			sleepCtx(ctx, cfg.Freeze)
			etcd.StartMember(i)
			return e
		}},
		{"replica SIGSTOP", func(ctx context.Context, k int) faultEvent { return c.faultFreeze(k%2)(ctx, k) }},
	}
	c.run(serverLane, c.agentLane(true))
}

// startSimFleet enrolls n simulated agents through server s and has them
// heartbeat through it every interval, each heartbeat a new mTLS
// connection with the agent's own certificate, until the run is over.
func (c *chaos) startSimFleet(s *chaosServer, n int, interval time.Duration) {
	t := c.t
	if n <= 0 {
		return
	}
	bench := buildBench(t, t.TempDir())
	saved := filepath.Join(t.TempDir(), "sim-agents.txt")
	t.Logf("enrolling %d simulated agents through server %s", n, s.name)
	runCLIBinary(t, bench, "register", "--server.url="+s.URL, "--data.dir="+s.DataDir,
		fmt.Sprintf("--count=%d", n), "--concurrency=8", "--keep-alive", "--duration=10m",
		"--first=5000000", "--save="+saved)
	total := c.cfg.Warmup + c.cfg.Duration + 2*time.Minute
	simLog := &logBuffer{}
	dumpOnFailure(t, "simulated fleet", simLog)
	sim, err := spawn("simulated fleet", simLog, bench, "heartbeat", "--server.url="+s.URL, "--data.dir="+s.DataDir,
		"--agents.file="+saved, "--interval="+interval.String(), "--warmup=0s",
		"--duration="+total.String(), "--concurrency=32")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !sim.exited() {
			_ = sim.signal(syscall.SIGTERM)
			if !sim.wait(stopTimeout) {
				_ = sim.kill()
			}
		}
		t.Logf("simulated fleet:\n%s", simLog.tail(4096))
	})
}

// runCLIBinary runs bin with args, failing the test unless it exits 0.
func runCLIBinary(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	out, err := execOutput(ctx, bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return out
}

// newChaos starts the servers, Prometheus and five real agents in their
// namespaces, and waits until all are registered and scraped. With ha the
// servers are three replicas: a and b, which the faults kill and freeze and
// which the real agents know, and c, which no fault touches: it serves the
// simulated fleet, the probes and Prometheus' second job, and its resource
// slopes run over the whole run.
func newChaos(t *testing.T, cfg chaosConfig, lab *netLab, serverArgs []string, ha bool) *chaos {
	t.Helper()
	const realAgents = 5
	nets := make([]*agentNet, realAgents)
	for i := range nets {
		nets[i] = lab.addAgent(t, i)
	}
	// The agents reach the servers at the hub's addresses: the serving
	// certificate must name them.
	names := []string{"--tls.server-name=127.0.0.1", "--tls.server-name=localhost", "--log.level=info"}
	for _, n := range nets {
		names = append(names, "--tls.server-name="+n.HubIP)
	}
	c := &chaos{
		t: t, cfg: cfg,
		revoked:    map[string]bool{},
		probes:     map[string]*testAgent{},
		samples:    map[string][]resSample{},
		regStatus:  map[string]map[int]int{},
		upFailedAt: map[string]time.Time{},
		diagnosed:  map[string]time.Time{},
		violations: map[string]*violation{},

		checkLatency: map[string][]time.Duration{},
	}
	firstArgs := append(slices.Clone(serverArgs), names...)
	if ha {
		// Both replicas run on this host: the default replica id, the
		// hostname, would be taken twice.
		firstArgs = append(firstArgs, "--etcd.replica-id=a")
	}
	first := startServer(t, firstArgs...)
	c.servers = []*chaosServer{wrapServer(t, "a", first)}
	c.faulted = 1
	if ha {
		dirB := replicaDataDir(t, first.DataDir)
		b := startServer(t, append(slices.Clone(serverArgs), append(names, "--data.dir="+dirB, "--etcd.replica-id=b")...)...)
		c.servers = append(c.servers, wrapServer(t, "b", b))
		c.faulted = 2
		// Replica c signs certificates for a day: the simulated agents
		// enroll through it and cannot renew. The real agents, whose
		// certificates must expire during a partition, do not know it.
		argsC := slices.DeleteFunc(slices.Clone(serverArgs), func(a string) bool { return strings.HasPrefix(a, "--cert.ttl=") })
		dirC := replicaDataDir(t, first.DataDir)
		quiet := startServer(t, append(argsC, append(names, "--cert.ttl=24h", "--data.dir="+dirC, "--etcd.replica-id=c")...)...)
		c.servers = append(c.servers, wrapServer(t, "c", quiet))
	}
	s := c.servers[0]
	prom := issueCert(t, s.DataDir, "prometheus", "discovery")
	c.sd = s.client(t, prom.KeyPair)
	// Agents serve certificates of the agent CA, which Prometheus' scrape
	// jobs trust on their own (the server CA's path length forbids
	// verifying them through it).
	agentCA, err := os.ReadFile(prom.AgentCAFile)
	if err != nil {
		t.Fatal(err)
	}
	c.scraper = newClient(t, agentCA, prom.KeyPair)
	c.adminTok = createToken(t, s.DataDir, "--scope=admin", "--ttl=24h")
	c.enrollTok = createToken(t, s.DataDir, "--scope=enroll", "--ttl=24h")

	for i, n := range nets {
		c.agents = append(c.agents, startChaosAgent(t, i, n, c.servers[:c.faulted], c.enrollTok))
	}
	for _, a := range c.agents {
		waitFor(t, startTimeout, func() error {
			id, err := a.readID()
			if err != nil {
				return err
			}
			a.ID = id
			return nil
		})
	}
	// Prometheus discovers through the first server and, with replicas,
	// through the one no fault touches in a second job, and keeps the real
	// agents only: the simulated ones have addresses nobody listens on.
	c.jobs = []string{"chaos"}
	sdServers := []*chaosServer{s}
	if ha {
		c.jobs = append(c.jobs, "chaos-c")
		sdServers = append(sdServers, c.servers[2])
	}
	promCfg := fmt.Sprintf(`
global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
scrape_configs:
`, promDuration(cfg.Scrape))
	for i, job := range c.jobs {
		promCfg += fmt.Sprintf(`
  - job_name: %[7]s
    tls_config:
      ca_file: %[6]s
      cert_file: %[2]s
      key_file: %[3]s
    http_sd_configs:
      - url: %[4]s
        refresh_interval: %[5]s
        tls_config:
          ca_file: %[1]s
          cert_file: %[2]s
          key_file: %[3]s
    relabel_configs:
      - source_labels: [__meta_baremetal_sd_hostname]
        regex: chaos-agent-.*
        action: keep
      - source_labels: [__meta_baremetal_sd_exporter]
        target_label: exporter
      - source_labels: [__meta_baremetal_sd_hostname]
        target_label: hostname
`, prom.CAFile, prom.CertFile, prom.KeyFile, sdServers[i].URL+protocol.PathDiscovery, promDuration(cfg.Scrape), prom.AgentCAFile, job)
	}
	c.prom = startPrometheus(t, promCfg)
	// Heartbeat interval: a quarter of --agent.ttl.
	c.ttl = 5 * time.Minute
	for _, a := range serverArgs {
		if v, ok := strings.CutPrefix(a, "--agent.ttl="); ok {
			c.ttl, _ = time.ParseDuration(v)
		}
	}
	// An agent that left http_sd (a partition longer than its TTL) comes
	// back with its next heartbeat, then Prometheus' next http_sd refresh,
	// then its next scrape: the refresh interval is the scrape interval.
	// 5 s more for the query and this busy machine.
	c.heartbeatGrace = c.ttl/4 + 2*cfg.Scrape + 5*time.Second
	if ha {
		// The heartbeat may reach another replica than the one Prometheus
		// asks, which learns it with that replica's next flush of
		// heartbeats to etcd: every quarter of the TTL (the server's
		// default --registry.flush-interval with etcd, capped there).
		c.heartbeatGrace += c.ttl / 4
	}
	waitFor(t, 2*time.Minute, func() error {
		up, err := c.upByAgent(t.Context())
		if err != nil {
			return err
		}
		for _, a := range c.agents {
			if err := c.agentUp(up, a, time.Time{}, true); err != nil {
				return err
			}
		}
		return nil
	})
	return c
}

// promDuration formats d the way Prometheus configurations spell durations.
func promDuration(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }

// upSample is the latest up of one target: its value and when Prometheus
// scraped it.
type upSample struct {
	Value string
	At    time.Time
}

// upView is Prometheus' latest up by job, agent address and exporter
// ("agent" for the agent's own target).
type upView map[string]map[string]map[string]upSample

// upByAgent returns Prometheus' latest up of the real agents' targets.
func (c *chaos) upByAgent(ctx context.Context) (upView, error) {
	var data struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	// The sample's own timestamp, not the query's: timestamp(up). A target
	// Prometheus dropped has no sample at all: when it drops a target it
	// ends its series with a staleness marker (two scrape intervals
	// later), and the query's 5 m lookback stops there.
	sel := `up{job=~"chaos|chaos-c"}`
	if err := c.prom.api(ctx, "/api/v1/query?query="+url.QueryEscape(sel+` or label_replace(timestamp(`+sel+`), "kind", "ts", "", "")`), &data); err != nil {
		return nil, err
	}
	out := upView{}
	for _, r := range data.Result {
		job, inst, exp := r.Metric["job"], r.Metric["instance"], r.Metric["exporter"]
		if out[job] == nil {
			out[job] = map[string]map[string]upSample{}
		}
		if out[job][inst] == nil {
			out[job][inst] = map[string]upSample{}
		}
		v, _ := r.Value[1].(string)
		u := out[job][inst][exp]
		if r.Metric["kind"] != "ts" {
			u.Value = v
		} else {
			f, _ := strconv.ParseFloat(v, 64)
			u.At = time.UnixMilli(int64(f * 1000))
		}
		out[job][inst][exp] = u
	}
	return out, nil
}

// agentUp says why agent a is not up in every job (its own target and, if
// node, its node exporter's), scraped after since; nil if it is.
func (c *chaos) agentUp(up upView, a *chaosAgent, since time.Time, node bool) error {
	for _, job := range c.jobs {
		ag, nd := up[job][a.Addr]["agent"], up[job][a.Addr]["node"]
		if ag.Value != "1" || !ag.At.After(since) || node && (nd.Value != "1" || !nd.At.After(since)) {
			return fmt.Errorf("agent %s: job %s: up %v", a.Hostname, job, up[job][a.Addr])
		}
	}
	return nil
}

// run warms up, runs the fault lanes and the checks for the configured
// duration, waits for the fleet to settle and reports.
func (c *chaos) run(serverLane, agentLane []fault) {
	t := c.t
	ctx := t.Context()
	c.faultStart = time.Now()
	// Warm-up: the fleet runs without faults; checks run already.
	stopAt := c.faultStart.Add(c.cfg.Warmup + c.cfg.Duration)
	laneCtx, stopLanes := context.WithDeadline(ctx, stopAt)
	defer stopLanes()
	var lanes sync.WaitGroup
	lanes.Go(func() {
		sleepCtx(laneCtx, c.cfg.Warmup)
		c.runLane(laneCtx, serverLane)
	})
	lanes.Go(func() {
		sleepCtx(laneCtx, c.cfg.Warmup+c.cfg.Pause)
		c.runLane(laneCtx, agentLane)
	})
	lanes.Go(func() { c.registrar(laneCtx) })

	lanesDone := make(chan struct{})
	go func() {
		lanes.Wait()
		close(lanesDone)
	}()
	check := time.NewTicker(c.cfg.CheckEvery)
	defer check.Stop()
	sample := time.NewTicker(c.cfg.SampleEvery)
	defer sample.Stop()
	c.sampleResources(ctx)
	for done := false; !done; {
		select {
		case <-check.C:
			c.checkInvariants(ctx)
		case <-sample.C:
			c.sampleResources(ctx)
		case <-lanesDone:
			done = true
		case <-ctx.Done():
			t.Fatal("the test's deadline passed during the chaos run")
		}
	}
	// Every fault is undone: the whole fleet must be back, and the checks
	// must pass once more. An agent that is not is a violation; the report
	// is written either way.
	if _, err := recoverWithin(ctx, time.Now(), 2*c.heartbeatGrace+startTimeout, func() error {
		up, err := c.upByAgent(ctx)
		if err != nil {
			return err
		}
		for _, a := range c.agents {
			if err := c.agentUp(up, a, time.Time{}, true); err != nil {
				return fmt.Errorf("after the faults: %w", err)
			}
		}
		return nil
	}); err != nil {
		c.violate("the fleet did not come back after the faults: %v", err)
	}
	c.checkInvariants(ctx)
	c.sampleResources(ctx)
	c.collectServerTimings(ctx)
	c.report()
}

// registrar registers a probe agent every second or so through a server
// that should be up, records the acknowledged ones, revokes every fifth
// and checks that a revoked agent's heartbeat is refused.
func (c *chaos) registrar(ctx context.Context) {
	for n := 0; ctx.Err() == nil; n++ {
		sleepCtx(ctx, time.Second)
		s := c.servers[n%len(c.servers)]
		if !s.available() {
			continue
		}
		// A failed registration is expected during a fault: it is counted
		// by phase, and what breaks an invariant is recorded as a violation
		// inside.
		_ = c.probeRegister(ctx, s)
	}
}

// phase names what the server is going through, for the registration
// status counts.
func (c *chaos) phase(_ *chaosServer) string {
	if c.diskDir != "" {
		if _, err := os.Stat(filepath.Join(c.diskDir, "filler")); err == nil {
			return "disk full"
		}
	}
	return "normal"
}

// probeRegister makes one registration through s; acknowledged ones are
// remembered, and every fifth is revoked right away.
func (c *chaos) probeRegister(ctx context.Context, s *chaosServer) error {
	_, err := c.probeRegisterLabels(ctx, s, nil)
	return err
}

// probeRegisterLabels is probeRegister with agent labels; it returns the
// acknowledged probe agent.
func (c *chaos) probeRegisterLabels(ctx context.Context, s *chaosServer, labels map[string]string) (*testAgent, error) {
	phase := c.phase(s)
	c.mu.Lock()
	n := len(c.acked)
	c.mu.Unlock()
	host := fmt.Sprintf("chaos-probe-%d", n)
	key := newKey(c.t)
	req := registerRequest(host)
	req.Labels = labels
	csr, err := makeCSR(key, host)
	if err != nil {
		return nil, err
	}
	req.CSR = csr
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := doRequest(rctx, s.anon, http.MethodPost, s.URL+protocol.PathRegister, c.enrollTok, req)
	status := -1
	if err == nil {
		status = resp.Status
	}
	c.mu.Lock()
	if c.regStatus[phase] == nil {
		c.regStatus[phase] = map[int]int{}
	}
	c.regStatus[phase][status]++
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusOK {
		if resp.Status >= 500 && resp.Status != http.StatusServiceUnavailable {
			c.violate("registration through %s answered %d (want 200 or 503): %s", s.name, resp.Status, truncate(resp.Body))
		}
		if resp.Status == http.StatusServiceUnavailable && !strings.Contains(string(resp.Body), `"error"`) {
			c.violate("503 without a reason: %s", truncate(resp.Body))
		}
		return nil, fmt.Errorf("registration: status %d: %s", resp.Status, truncate(resp.Body))
	}
	var cr protocol.CertificateResponse
	if err := json.Unmarshal(resp.Body, &cr); err != nil || cr.AgentID == "" {
		c.violate("registration acknowledged without an agent id: %s", truncate(resp.Body))
		return nil, fmt.Errorf("no agent id")
	}
	cert, err := keyPairFromPEM(cr.Certificate, key)
	if err != nil {
		c.violate("registration acknowledged with a bad certificate: %v", err)
		return nil, err
	}
	a := &testAgent{ID: cr.AgentID, Key: key, Resp: cr, Cert: cert, Client: newClient(c.t, s.caPEM(c.t), cert)}
	c.mu.Lock()
	c.acked = append(c.acked, cr.AgentID)
	c.probes[cr.AgentID] = a
	revoke := len(c.acked)%5 == 0
	c.mu.Unlock()
	if revoke {
		c.revokeAndHeartbeat(ctx, s, a)
	}
	return a, nil
}

// revokeAndHeartbeat revokes a through s and then tries a heartbeat with
// its certificate, which must be refused. It reports whether the
// revocation was acknowledged.
func (c *chaos) revokeAndHeartbeat(ctx context.Context, s *chaosServer, a *testAgent) bool {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := doRequest(rctx, s.anon, http.MethodDelete, s.URL+protocol.PathAgents+"/"+a.ID, c.adminTok, nil)
	if err != nil || resp.Status != http.StatusOK && resp.Status != http.StatusNoContent {
		return false // not acknowledged: not revoked
	}
	c.mu.Lock()
	c.revoked[a.ID] = true
	c.mu.Unlock()
	for _, srv := range c.servers {
		if !srv.available() {
			continue
		}
		// The replica that revoked must refuse at once; another one once
		// its watch has brought the revocation, which is measured.
		began := time.Now()
		for {
			hctx, cancel := context.WithTimeout(ctx, requestTimeout)
			hb, err := doRequest(hctx, a.Client, http.MethodPost, srv.URL+protocol.PathHeartbeat, "", map[string]string{"status": "ok"})
			cancel()
			if err != nil || hb.Status != http.StatusOK {
				if srv != s {
					c.mu.Lock()
					c.revocationLag = append(c.revocationLag, time.Since(began))
					c.mu.Unlock()
				}
				break
			}
			if srv == s {
				c.violate("revoked agent %s heartbeated through %s, which revoked it: 200", a.ID, srv.name)
				break
			}
			if time.Since(began) > maxRevocationLag {
				c.violate("revoked agent %s still heartbeats through %s %s after the revocation through %s", a.ID, srv.name, maxRevocationLag, s.name)
				break
			}
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
	return true
}

// maxRevocationLag bounds how long another replica may accept a revoked
// agent's heartbeats: the time its etcd watch takes to bring the
// revocation. Those heartbeats only refresh a last-seen time; they never
// put the agent back into http_sd, which the checks verify separately.
const maxRevocationLag = 10 * time.Second

// checkInvariants runs the continuous checks once.
func (c *chaos) checkInvariants(ctx context.Context) {
	now := time.Now()
	c.mu.Lock()
	c.checks++
	acked := slices.Clone(c.acked)
	revoked := make(map[string]bool, len(c.revoked))
	for id := range c.revoked {
		revoked[id] = true
	}
	c.mu.Unlock()
	// Acknowledged registrations and revocations, through every server
	// that is meant to be up.
	for _, s := range c.servers {
		if !s.available() {
			continue
		}
		var (
			list, sd  *response
			err, err2 error
		)
		c.timedCheck(s, "agent list", func() {
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			defer cancel()
			list, err = doRequest(rctx, s.anon, http.MethodGet, s.URL+protocol.PathAgents, c.adminTok, nil)
		})
		c.timedCheck(s, "http_sd", func() {
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			defer cancel()
			sd, err2 = doRequest(rctx, c.sd, http.MethodGet, s.URL+protocol.PathDiscovery, "", nil)
		})
		if !s.available() {
			continue // a fault began meanwhile
		}
		if err != nil || list.Status != http.StatusOK {
			c.violate("server %s (not faulted): agent list: %v %v", s.name, err, statusOf(list))
			continue
		}
		if err2 != nil || sd.Status != http.StatusOK {
			c.violate("server %s (not faulted): http_sd: %v %v", s.name, err2, statusOf(sd))
			continue
		}
		var views []discovery.AgentView
		if err := json.Unmarshal(list.Body, &views); err != nil {
			c.violate("server %s: agent list: %v", s.name, err)
			continue
		}
		known := make(map[string]bool, len(views))
		for _, v := range views {
			known[v.ID] = true
		}
		for _, id := range acked {
			if !known[id] {
				c.violate("server %s lost the acknowledged registration %s", s.name, id)
			}
		}
		groups, err := checkSDBody(sd.Body)
		if err != nil {
			c.violate("server %s: http_sd: %v", s.name, err)
			continue
		}
		inSD := map[string]bool{}
		for _, g := range groups {
			inSD[g.Labels[protocol.MetaAgentID]] = true
		}
		for id := range revoked {
			if inSD[id] {
				c.violate("server %s: revoked agent %s is in http_sd", s.name, id)
			}
		}
		for _, a := range c.agents {
			if netEx, _ := a.exempt(now, c.heartbeatGrace); !netEx && !inSD[a.ID] {
				c.violate("server %s: healthy agent %s is missing from http_sd", s.name, a.Hostname)
				c.diagnose(ctx, a, "missing from the http_sd of server "+s.name)
			}
		}
	}
	// up of the real agents, as Prometheus sees it.
	up, err := c.upByAgent(ctx)
	if err != nil {
		c.violate("prometheus: %v", err)
		return
	}
	var failing []string
	for _, a := range c.agents {
		netEx, nodeEx := a.exempt(now, c.heartbeatGrace)
		for _, job := range c.jobs {
			for exp, exempt := range map[string]bool{"agent": netEx, "node": nodeEx} {
				if f := c.checkUp(ctx, now, job, a, exp, exempt, up[job][a.Addr][exp]); f != "" {
					failing = append(failing, f)
				}
			}
		}
	}
	if len(failing) > 0 {
		c.t.Logf("%s: one failed scrape (tolerated once): %v", now.Sub(c.faultStart).Round(time.Second), failing)
	}
}

// checkUp checks the latest up u of one target of agent a in Prometheus'
// job (exp "agent" or "node"), unless exempt. It returns the target's name
// if its scrape failed for the first time, which is tolerated once.
func (c *chaos) checkUp(ctx context.Context, now time.Time, job string, a *chaosAgent, exp string, exempt bool, u upSample) string {
	key := job + " " + a.Addr + " " + exp
	if exempt {
		delete(c.upFailedAt, key)
		return ""
	}
	// A target Prometheus dropped has no up at all (see upByAgent); one it
	// stopped scraping keeps its last for the lookback period: a stale
	// sample counts as a dropped target.
	if u.At.IsZero() {
		c.violate("agent %s: no up{job=%q, exporter=%q} at all, while healthy: Prometheus dropped the target", a.Hostname, job, exp)
		c.diagnose(ctx, a, fmt.Sprintf("no up{job=%q, exporter=%q}", job, exp))
		return ""
	}
	if age := now.Sub(u.At); age > 3*c.cfg.Scrape+5*time.Second {
		c.violate("agent %s: up{job=%q, exporter=%q} last scraped %s ago, while healthy", a.Hostname, job, exp, age.Round(time.Second))
		c.diagnose(ctx, a, fmt.Sprintf("up{job=%q, exporter=%q} last scraped %s ago", job, exp, age.Round(time.Second)))
		return ""
	}
	if u.Value == "1" {
		delete(c.upFailedAt, key)
		return ""
	}
	// One failed scrape is tolerated and counted: on this shared two-core
	// machine a scrape now and then misses its timeout. Two in a row are a
	// violation.
	prev, failedBefore := c.upFailedAt[key]
	if !failedBefore {
		c.upFailedAt[key] = u.At
		c.mu.Lock()
		c.singleFailedScrapes++
		c.mu.Unlock()
		return key
	}
	if !u.At.Equal(prev) {
		c.violate("agent %s: up{job=%q, exporter=%q} = 0 in two scrapes in a row while healthy", a.Hostname, job, exp)
		c.diagnose(ctx, a, fmt.Sprintf("up{job=%q, exporter=%q} = 0 twice", job, exp))
		c.upFailedAt[key] = u.At
	}
	return ""
}

func statusOf(r *response) string {
	if r == nil {
		return "no response"
	}
	return fmt.Sprintf("status %d: %s", r.Status, truncate(r.Body))
}

// collectServerTimings keeps the servers' own latency histograms.
func (c *chaos) collectServerTimings(ctx context.Context) {
	for _, s := range c.servers {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := doRequest(rctx, s.anon, http.MethodGet, s.URL+"/metrics", "", nil)
		cancel()
		if err != nil || resp.Status != http.StatusOK {
			continue
		}
		started := ""
		if v, ok := metricValue(resp.Body, "process_start_time_seconds"); ok {
			started = fmt.Sprintf(", started %s before the end", time.Since(time.Unix(int64(v), 0)).Round(time.Second))
		}
		c.mu.Lock()
		c.serverTimings = append(c.serverTimings, "server "+s.name+started+":")
		for _, l := range serverTimings(resp.Body) {
			c.serverTimings = append(c.serverTimings, "  "+l)
		}
		c.mu.Unlock()
	}
}

// sampleResources records RSS, open fds and goroutines of servers and
// agents.
func (c *chaos) sampleResources(ctx context.Context) {
	now := time.Now()
	var load float64
	if _, err := fmt.Sscan(loadAvg(), &load); err == nil {
		c.mu.Lock()
		c.loads = append(c.loads, load)
		c.mu.Unlock()
	}
	add := func(name string, pid int, url string, client *http.Client) {
		rss, fds, err := procStats(pid)
		if err != nil {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		g := math.NaN()
		if resp, err := doRequest(rctx, client, http.MethodGet, url, "", nil); err == nil && resp.Status == http.StatusOK {
			if v, ok := metricValue(resp.Body, "go_goroutines"); ok {
				g = v
			}
		}
		c.mu.Lock()
		c.samples[name] = append(c.samples[name], resSample{At: now, PID: pid, RSS: rss, FDs: fds, Goroutines: g})
		c.mu.Unlock()
	}
	for i, s := range c.servers {
		if !s.available() {
			continue
		}
		name := "server " + s.name
		if i >= c.faulted {
			name += " (never faulted)"
		}
		add(name, s.pid(), s.URL+"/metrics", s.anon)
	}
	for _, a := range c.agents {
		a.mu.Lock()
		p := a.proc
		a.mu.Unlock()
		if netEx, _ := a.exempt(now, 0); netEx {
			continue
		}
		add("agent "+a.Hostname, p.cmd.Process.Pid, "https://"+a.Addr+"/metrics", c.scraper)
	}
}

// slope fits y = a + b·x by least squares and returns b.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// report logs what the run measured as the tables of RELIABILITY.md and
// fails the test on violations.
func (c *chaos) report() {
	t := c.t
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "chaos run: %s warm-up, %s of faults, %d invariant checks, %d acknowledged registrations, %d revoked, %d single failed scrapes of healthy agents (tolerated once each)\n\n",
		c.cfg.Warmup, c.cfg.Duration, c.checks, len(c.acked), len(c.revoked), c.singleFailedScrapes)
	fmt.Fprintf(&b, "| fault | injected | not recovered | recovery median | recovery max |\n|---|---|---|---|---|\n")
	byName := map[string][]faultEvent{}
	var names []string
	for _, e := range c.events {
		if byName[e.Name] == nil {
			names = append(names, e.Name)
		}
		byName[e.Name] = append(byName[e.Name], e)
	}
	for _, n := range names {
		var recs []time.Duration
		failed := 0
		for _, e := range byName[n] {
			if e.Err != "" {
				failed++
				continue
			}
			recs = append(recs, e.Recovery)
		}
		med, mx := "-", "-"
		if len(recs) > 0 {
			slices.Sort(recs)
			med = recs[len(recs)/2].Round(100 * time.Millisecond).String()
			mx = recs[len(recs)-1].Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s |\n", n, len(byName[n]), failed, med, mx)
	}
	if len(c.revocationLag) > 0 {
		lags := slices.Sorted(slices.Values(c.revocationLag))
		fmt.Fprintf(&b, "\nrevocation through one replica until the other refuses the agent's heartbeats: %d revocations, median %s, max %s\n",
			len(lags), lags[len(lags)/2].Round(time.Millisecond), lags[len(lags)-1].Round(time.Millisecond))
	}
	if len(c.loads) > 0 {
		ls := slices.Sorted(slices.Values(c.loads))
		fmt.Fprintf(&b, "\nmachine load average (1 min) at the %d resource samples: min %.1f, median %.1f, max %.1f (%d cores)\n",
			len(ls), ls[0], ls[len(ls)/2], ls[len(ls)-1], runtime.NumCPU())
	}
	fmt.Fprintf(&b, "\ncheck requests (agent list, http_sd) to servers not under a fault:\n")
	for _, name := range slices.Sorted(maps.Keys(c.checkLatency)) {
		fmt.Fprintf(&b, "  server %s: %s\n", name, latencySummary(c.checkLatency[name]))
	}
	if len(c.serverTimings) > 0 {
		fmt.Fprintf(&b, "\nthe servers' own timings at the end of the run (since their last start):\n")
		for _, l := range c.serverTimings {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	if len(c.slow) > 0 {
		fmt.Fprintf(&b, "\nanswers slower than %s, with what the server's threads did meanwhile:\n", slowAnswer)
		for _, l := range c.slow {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	fmt.Fprintf(&b, "\nregistration replies by phase (status: count; -1 = no answer):\n")
	for _, p := range slices.Sorted(maps.Keys(c.regStatus)) {
		fmt.Fprintf(&b, "  %s: %v\n", p, c.regStatus[p])
	}
	fmt.Fprintf(&b, "\n| process | samples after warm-up | RSS slope (KiB/min) | goroutines slope (/min) | fds slope (/min) | RSS first → last (MiB) | goroutines first → last | fds first → last |\n|---|---|---|---|---|---|---|---|\n")
	warm := c.faultStart.Add(c.cfg.Warmup)
	for _, name := range slices.Sorted(maps.Keys(c.samples)) {
		// Slopes are per process lifetime: the longest one after warm-up.
		byPID := map[int][]resSample{}
		for _, s := range c.samples[name] {
			if s.At.After(warm) {
				byPID[s.PID] = append(byPID[s.PID], s)
			}
		}
		var longest []resSample
		for _, ss := range byPID {
			if len(ss) > len(longest) {
				longest = ss
			}
		}
		if len(longest) < 3 {
			continue
		}
		var xs, rss, gs, fds []float64
		for _, s := range longest {
			if math.IsNaN(s.Goroutines) {
				continue
			}
			xs = append(xs, s.At.Sub(longest[0].At).Minutes())
			rss = append(rss, float64(s.RSS)/1024)
			gs = append(gs, s.Goroutines)
			fds = append(fds, float64(s.FDs))
		}
		if len(xs) < 3 {
			continue
		}
		f, l := longest[0], longest[len(longest)-1]
		fmt.Fprintf(&b, "| %s | %d over %s | %+.1f | %+.2f | %+.2f | %.1f → %.1f | %.0f → %.0f | %d → %d |\n",
			name, len(xs), l.At.Sub(f.At).Round(time.Second), slope(xs, rss), slope(xs, gs), slope(xs, fds),
			float64(f.RSS)/(1<<20), float64(l.RSS)/(1<<20), f.Goroutines, l.Goroutines, f.FDs, l.FDs)
	}
	if len(c.diagnostics) > 0 {
		fmt.Fprintf(&b, "\ngaps diagnosed (what the servers and Prometheus said when a check found a healthy agent missing):\n")
		for _, d := range c.diagnostics {
			fmt.Fprintf(&b, "%s\n", d)
		}
	}
	fmt.Fprintf(&b, "\nfault events:\n")
	for _, e := range c.events {
		status := "recovered in " + e.Recovery.Round(100*time.Millisecond).String()
		if e.Err != "" {
			status = "NOT RECOVERED: " + e.Err
		}
		fmt.Fprintf(&b, "  %6s  %-50s %-20s %s %s\n", e.Start.Sub(c.faultStart).Round(time.Second), e.Name, e.Target, status, e.Note)
	}
	viol := c.violationLines()
	fmt.Fprintf(&b, "\n%d kinds of invariant violations\n", len(viol))
	for _, l := range viol {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	t.Logf("%s\n%s", t.Name(), b.String())
	if path := os.Getenv("CHAOS_REPORT_DIR"); path != "" {
		_ = os.WriteFile(filepath.Join(path, strings.ReplaceAll(t.Name(), "/", "_")+".md"), []byte(b.String()), 0o644)
	}
	for _, l := range viol {
		t.Errorf("invariant violated: %s", l)
	}
}
