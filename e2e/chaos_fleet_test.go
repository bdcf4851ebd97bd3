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
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This file holds the processes of the chaos harness (chaos_test.go): the
// servers it kills and restarts from its fault goroutines, the real agents
// in their namespaces with their node_exporters, the simulated fleet and the
// small filesystem under the bolt data directory. Nothing here may call
// t.Fatal from a goroutine other than the test's, so the methods used by
// the fault schedule return errors instead.

// spawn starts bin with args, writing its output to log.
func spawn(name string, log io.Writer, bin string, args ...string) (*process, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// chaosServer is a server that the fault schedule kills, freezes and
// restarts while the checks read it: its process is guarded by mu.
type chaosServer struct {
	name string
	*testServer
	anon *http.Client // trusts the CA; no client certificate

	mu     sync.Mutex
	faulty int // > 0 while a fault is meant to make it unavailable
}

// wrapServer takes over a server started by startServer.
func wrapServer(t *testing.T, name string, s *testServer) *chaosServer {
	return &chaosServer{name: name, testServer: s, anon: s.client(t)}
}

// current returns the running process.
func (s *chaosServer) current() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// pid returns the process id of the running server.
func (s *chaosServer) pid() int { return s.current().cmd.Process.Pid }

// setFaulty marks the server (un)available on purpose; checks that need it
// skip it meanwhile.
func (s *chaosServer) setFaulty(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		s.faulty++
	} else {
		s.faulty--
	}
}

// available reports whether no fault is meant to make the server unavailable.
func (s *chaosServer) available() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faulty == 0 && !s.proc.exited()
}

// relaunch starts the server again with its command line, after it exited,
// and waits until it is ready; it returns how long that took.
func (s *chaosServer) relaunch(ctx context.Context) (time.Duration, error) {
	began := time.Now()
	fmt.Fprintf(s.log, "=== %s %s\n", filepath.Base(serverBinary), strings.Join(s.args, " "))
	p, err := spawn("baremetal_sd server", s.log, serverBinary, s.args...)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	if err := s.waitReadyCtx(ctx, startTimeout); err != nil {
		return time.Since(began), err
	}
	return time.Since(began), nil
}

// waitReadyCtx polls /-/ready until it answers 200 or timeout passes.
func (s *chaosServer) waitReadyCtx(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		p := s.current()
		if p.exited() {
			return fmt.Errorf("server %s exited: %w", s.name, p.err)
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := doRequest(rctx, s.anon, http.MethodGet, s.URL+"/-/ready", "", nil)
		cancel()
		if err == nil && resp.Status == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server %s not ready after %s: %w", s.name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// chaosAgent is a real agent in its own network namespace, relaying a real
// node_exporter that runs in the same namespace.
type chaosAgent struct {
	idx      int
	Hostname string
	net      *agentNet
	// Addr is 127.0.0.1:PORT, a forwarder in the host's namespace to the
	// agent's listener, which is what the agent registers and Prometheus
	// scrapes.
	Addr     string
	StateDir string
	ID       string
	// RelayConfig is the agent's relay configuration file, which the
	// reload fault rewrites; NodeAddr is its node_exporter's address
	// inside the namespace.
	RelayConfig string
	NodeAddr    string

	args     []string
	log      *logBuffer
	toServer []*faultProxy // one per server: the path the faults degrade
	scrape   *faultProxy   // Prometheus' path into the namespace

	mu       sync.Mutex
	proc     *process
	node     *process
	nodeArgs []string
	nodeLog  *logBuffer
	// The faults on the agent's network and on its exporter: while one is
	// active and shortly after, checks exempt the agent (all of it, or
	// only its exporter) from staying in http_sd and up.
	netFault  faultWindow
	nodeFault faultWindow
}

// faultWindow tracks a fault on one thing: how many are active, and when
// the last one ended.
type faultWindow struct {
	active int
	ended  time.Time
}

// exempt reports whether checks must tolerate the thing being down at now:
// a fault is active or ended less than grace ago.
func (w faultWindow) exempt(now time.Time, grace time.Duration) bool {
	return w.active > 0 || (!w.ended.IsZero() && now.Sub(w.ended) < grace)
}

// startChaosAgent starts node_exporter and the agent in namespace n,
// enrolling with token through a forwarder per server.
func startChaosAgent(t *testing.T, idx int, n *agentNet, servers []*chaosServer, token string) *chaosAgent {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t) // free on the host's 127.0.0.1; the namespace is empty
	a := &chaosAgent{
		idx:      idx,
		Hostname: fmt.Sprintf("chaos-agent-%d", idx),
		net:      n,
		Addr:     fmt.Sprintf("127.0.0.1:%d", port),
		StateDir: filepath.Join(dir, "state"),
		log:      &logBuffer{},
		nodeLog:  &logBuffer{},
	}
	// The agent's way to each server: a forwarder listening in the hub
	// namespace on the hub's end of the agent's cable, on the server's
	// port, relaying to the server on 127.0.0.1.
	var urls []string
	for _, s := range servers {
		_, sport, _ := net.SplitHostPort(s.Addr)
		ln, err := listenIn(n.lab.hub, net.JoinHostPort(n.HubIP, sport))
		if err != nil {
			t.Fatal(err)
		}
		target := s.Addr
		p := newFaultProxy(ln, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", target)
		})
		t.Cleanup(p.close)
		a.toServer = append(a.toServer, p)
		urls = append(urls, "https://"+net.JoinHostPort(n.HubIP, sport))
	}
	// Prometheus' way to the agent.
	ln, err := net.Listen("tcp", a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	agentListen := net.JoinHostPort(n.AgentIP, strconv.Itoa(port))
	a.scrape = newFaultProxy(ln, func(ctx context.Context) (net.Conn, error) {
		return dialIn(ctx, n.lab.hub, agentListen)
	})
	t.Cleanup(a.scrape.close)

	nodeAddr := "127.0.0.1:9100" // inside the agent's namespace
	a.nodeArgs = []string{"netns", "exec", n.NS, nodeExporterBinary,
		"--web.listen-address=" + nodeAddr,
		"--collector.disable-defaults", "--collector.loadavg", "--collector.meminfo"}
	tokenFile := filepath.Join(dir, "enroll.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	relayCfg := filepath.Join(dir, "relay.yml")
	a.RelayConfig, a.NodeAddr = relayCfg, nodeAddr
	if err := a.writeRelayConfig(""); err != nil {
		t.Fatal(err)
	}
	a.args = []string{"netns", "exec", n.NS, binary, "agent",
		"--discovery.ca-file=" + filepath.Join(servers[0].DataDir, "ca.crt"),
		"--discovery.token-file=" + tokenFile,
		"--agent.state-dir=" + a.StateDir,
		"--web.listen-address=" + agentListen,
		"--agent.hostname=" + a.Hostname,
		"--agent.address=127.0.0.1",
		"--relay.config.file=" + relayCfg,
		"--log.level=debug",
	}
	for _, u := range urls {
		a.args = append(a.args, "--discovery.url="+u)
	}
	dumpOnFailure(t, "node_exporter of "+a.Hostname, a.nodeLog)
	dumpOnFailure(t, "agent "+a.Hostname, a.log)
	t.Cleanup(func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, p := range []*process{a.proc, a.node} {
			if p != nil && !p.exited() {
				_ = p.kill()
			}
		}
	})
	if err := a.startNode(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(a.log, "=== ip %s\n", strings.Join(a.args, " "))
	p, err := spawn("agent "+a.Hostname, a.log, "ip", a.args...)
	if err != nil {
		t.Fatal(err)
	}
	a.proc = p
	return a
}

// writeRelayConfig writes the agent's relay configuration, relaying its
// node_exporter, with the agent label reload=gen unless gen is empty.
func (a *chaosAgent) writeRelayConfig(gen string) error {
	cfg := "exporters:\n  - name: node\n    url: http://" + a.NodeAddr + "/metrics\n"
	if gen != "" {
		cfg = "labels:\n  reload: \"" + gen + "\"\n" + cfg
	}
	return os.WriteFile(a.RelayConfig, []byte(cfg), 0o600)
}

// startNode starts (or restarts) the agent's node_exporter.
func (a *chaosAgent) startNode() error {
	p, err := spawn("node_exporter of "+a.Hostname, a.nodeLog, "ip", a.nodeArgs...)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.node = p
	a.mu.Unlock()
	return nil
}

// agentProc returns the agent process.
func (a *chaosAgent) agentProc() *process {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.proc
}

// nodeProc returns the node_exporter process.
func (a *chaosAgent) nodeProc() *process {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.node
}

// readID waits for the agent's state file and reads its id.
func (a *chaosAgent) readID() (string, error) {
	data, err := os.ReadFile(filepath.Join(a.StateDir, "agent.json"))
	if err != nil {
		return "", err
	}
	_, rest, ok := strings.Cut(string(data), `"agent_id":"`)
	if !ok {
		_, rest, ok = strings.Cut(string(data), `"agent_id": "`)
	}
	id, _, _ := strings.Cut(rest, `"`)
	if !ok || id == "" {
		return "", fmt.Errorf("no agent_id in %s", a.StateDir)
	}
	return id, nil
}

// certNotAfter reads the expiry of the agent's current certificate.
func (a *chaosAgent) certNotAfter() (time.Time, error) {
	data, err := os.ReadFile(filepath.Join(a.StateDir, "cert.pem"))
	if err != nil {
		return time.Time{}, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return time.Time{}, errors.New("cert.pem holds no PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return time.Time{}, err
	}
	return c.NotAfter, nil
}

// setNetFault and setNodeFault open (on) or close a fault window.
func (a *chaosAgent) setNetFault(on bool)  { a.setFault(&a.netFault, on) }
func (a *chaosAgent) setNodeFault(on bool) { a.setFault(&a.nodeFault, on) }

func (a *chaosAgent) setFault(w *faultWindow, on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if on {
		w.active++
		return
	}
	w.active--
	w.ended = time.Now()
}

// exempt reports whether the agent as a whole (net) or its node exporter
// may be down at now.
func (a *chaosAgent) exempt(now time.Time, grace time.Duration) (net, node bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.netFault.exempt(now, grace)
	return n, n || a.nodeFault.exempt(now, grace)
}

// mountTmpfs mounts a tmpfs of size bytes at dir, unmounted (lazily, if it
// is still busy) when the test ends.
func mountTmpfs(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Fatalf("mount tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

// fillDisk writes path until the filesystem is full and returns the bytes
// written; freeing the space is removing path.
func fillDisk(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for chunk := len(buf); chunk > 0; {
		w, err := f.Write(buf[:chunk])
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			// Fill the last pages too, in smaller writes.
			chunk /= 16
			continue
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// buildBench builds the load generator into dir.
func buildBench(t *testing.T, dir string) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	out := filepath.Join(dir, "baremetal_sd-bench")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, "./bench/cmd/baremetal_sd-bench")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build baremetal_sd-bench: %v\n%s", err, b)
	}
	return out
}

// procStats reads the resident memory (bytes) and open file descriptors of
// pid from /proc.
func procStats(pid int) (rss int64, fds int, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			rss = kb << 10
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return rss, 0, err
	}
	return rss, len(ents), nil
}

// metricValue returns the value of an unlabelled series in a text
// exposition.
func metricValue(body []byte, name string) (float64, bool) {
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}
