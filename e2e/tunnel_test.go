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
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// natHost is a network namespace with nothing but loopback: a host behind
// NAT. Processes in it reach the outside only through the outbound
// forwarders the test opens (the NAT gateway); nothing outside can open a
// connection into it.
type natHost struct {
	name string
}

// newNATHost creates the namespace and deletes it when the test ends,
// also when it fails.
func newNATHost(t *testing.T) *natHost {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	const prefix = "bsd-tunnel-"
	removeStaleNamespaces(t, prefix)
	n := &natHost{name: fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), time.Now().UnixNano()%1e6)}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	if out, err := exec.Command("ip", "netns", "exec", n.name, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return n
}

// listen opens a listener on 127.0.0.1 inside the namespace. A socket
// stays in the namespace it was made in, so the goroutine that makes it
// switches its (locked, then discarded) thread into the namespace.
func (n *natHost) listen(t *testing.T) net.Listener {
	t.Helper()
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// No UnlockOSThread: the thread ends with this goroutine, so no
		// other goroutine ever runs in the namespace.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", n.name))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		ch <- result{l, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { _ = r.l.Close() })
	return r.l
}

// gateway forwards connections made inside the namespace to 127.0.0.1 of
// the test's namespace, the way NAT lets a host dial out. It returns the
// address to dial inside the namespace.
func (n *natHost) gateway(t *testing.T, to string) string {
	t.Helper()
	return forward(t, n.listen(t), func() (net.Conn, error) {
		return net.DialTimeout("tcp", to, 5*time.Second)
	})
}

// forward copies every connection accepted on l both ways to one that dial
// makes, until either side closes; it returns l's address. Listener and
// connections are closed when the test ends.
func forward(t *testing.T, l net.Listener, dial func() (net.Conn, error)) string {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	track := func(c net.Conn, on bool) {
		mu.Lock()
		defer mu.Unlock()
		if on {
			open[c] = struct{}{}
		} else {
			delete(open, c)
		}
	}
	wg.Go(func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer in.Close()
				out, err := dial()
				if err != nil {
					return
				}
				defer out.Close()
				track(in, true)
				track(out, true)
				defer track(in, false)
				defer track(out, false)
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
				go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
				<-done
			})
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// start runs a program inside the namespace.
func (n *natHost) start(t *testing.T, name string, log *logBuffer, bin string, args ...string) *process {
	t.Helper()
	dumpOnFailure(t, name, log)
	p := startProcess(t, name, log, "ip", append([]string{"netns", "exec", n.name, bin}, args...)...)
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.kill()
		}
	})
	return p
}

// natAgent is a baremetal_sd agent with node_exporter, inside a natHost.
type natAgent struct {
	host     *natHost
	hostname string
	port     int
	stateDir string
	log      *logBuffer
	proc     *process
}

// startNATAgent starts node_exporter and `baremetal_sd agent --tunnel=on`
// in a new NAT host, with a gateway to each server.
func startNATAgent(t *testing.T, hostname, token string, servers ...*testServer) *natAgent {
	t.Helper()
	host := newNATHost(t)
	dir := t.TempDir()
	nodePort, agentPort := freePort(t), freePort(t)
	host.start(t, "node_exporter (NAT host)", &logBuffer{}, nodeExporterBinary,
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(nodePort), "--collector.disable-defaults", "--collector.loadavg", "--collector.cpu", "--collector.meminfo")
	relayFile := filepath.Join(dir, "relay.yml")
	tokenFile := filepath.Join(dir, "enroll.token")
	if err := os.WriteFile(relayFile, fmt.Appendf(nil, "exporters:\n  - name: node\n    url: http://127.0.0.1:%d/metrics\n", nodePort), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &natAgent{host: host, hostname: hostname, port: agentPort, stateDir: filepath.Join(dir, "state"), log: &logBuffer{}}
	args := []string{
		"agent",
		"--discovery.ca-file=" + filepath.Join(servers[0].DataDir, "ca.crt"),
		"--discovery.token-file=" + tokenFile,
		"--agent.state-dir=" + a.stateDir,
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(agentPort),
		"--agent.hostname=" + hostname,
		"--agent.address=127.0.0.1",
		"--relay.config.file=" + relayFile,
		"--tunnel=on",
		"--log.level=debug",
	}
	for _, s := range servers {
		args = append(args, "--discovery.url=https://"+host.gateway(t, s.Addr))
	}
	a.proc = host.start(t, "baremetal_sd agent (NAT host)", a.log, binary, args...)
	return a
}

// serverMetric reads one unlabelled metric of a server.
func serverMetric(t *testing.T, s *testServer, name string) (float64, error) {
	t.Helper()
	resp, err := doRequest(t.Context(), s.client(t), http.MethodGet, s.URL+"/metrics", "", nil)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(resp.Body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("%s missing from the server's metrics", name)
}

// waitTunnels waits until server s holds want tunnels.
func waitTunnels(t *testing.T, s *testServer, want float64) {
	t.Helper()
	waitFor(t, startTimeout, func() error {
		got, err := serverMetric(t, s, "baremetal_sd_tunnel_tunnels")
		if err == nil && got != want {
			err = fmt.Errorf("server %s holds %v tunnels, want %v", s.Addr, got, want)
		}
		return err
	})
}

// connectStatus sends CONNECT target to s with cert and returns the status.
func connectStatus(t *testing.T, s *testServer, cert tls.Certificate, target string) int {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.caPEM(t))
	conn, err := tls.Dial("tcp", s.Addr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode
}

// tunnelPrometheusConfig is the documented proxied job (see
// examples/prometheus.yml), and a job that tries the same targets directly.
// sd is the base URL of http_sd and proxy the proxy_url.
func tunnelPrometheusConfig(t *testing.T, sd string, promCert clientCert, proxy string) string {
	t.Helper()
	// cert issue writes the bundle of the server CA and the agent CA.
	bundle := filepath.Join(filepath.Dir(promCert.CAFile), "tunnel-ca.crt")
	return fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: baremetal-tunneled
    proxy_url: %[5]s
    enable_http2: false
    tls_config:
      ca_file: %[6]s
      cert_file: %[2]s
      key_file: %[3]s
    http_sd_configs:
      - url: %[4]s?tunnel=true
        refresh_interval: 1s
        tls_config:
          ca_file: %[1]s
          cert_file: %[2]s
          key_file: %[3]s
    relabel_configs:
      - source_labels: [__meta_baremetal_sd_exporter]
        target_label: exporter
  # The same targets without the proxy, at the address the agent
  # registered: Prometheus cannot reach a host behind NAT.
  - job_name: direct
    tls_config:
      ca_file: %[7]s
      cert_file: %[2]s
      key_file: %[3]s
    http_sd_configs:
      - url: %[4]s?tunnel=true&exporter=node
        refresh_interval: 1s
        tls_config:
          ca_file: %[1]s
          cert_file: %[2]s
          key_file: %[3]s
    relabel_configs:
      - source_labels: [__meta_baremetal_sd_address, __address__]
        regex: '(.+);.*:(\d+)'
        replacement: '$1:$2'
        target_label: __address__
      - source_labels: [__meta_baremetal_sd_exporter]
        target_label: exporter
`, promCert.CAFile, promCert.CertFile, promCert.KeyFile, sd+protocol.PathDiscovery, proxy, bundle, promCert.AgentCAFile)
}

// waitUp waits until the query returns one series with value want.
func waitQuery(t *testing.T, prom *testPrometheus, expr, want string) {
	t.Helper()
	waitFor(t, 60*time.Second, func() error {
		got, err := prom.query(t.Context(), expr)
		if err != nil {
			return err
		}
		if len(got) != 1 || got[0].Value != want {
			return fmt.Errorf("%s = %+v, want one series of %s", expr, got, want)
		}
		return nil
	})
}

// TestTunnel_PrometheusScrapesNATHost runs the whole path with real
// processes: an agent in a network namespace that Prometheus cannot reach,
// a server, and a real Prometheus scraping through the server.
func TestTunnel_PrometheusScrapesNATHost(t *testing.T) {
	for _, rel := range prometheusReleases() {
		t.Run(rel.Name, func(t *testing.T) { testTunnelScrapesNATHost(t, rel) })
	}
}

func testTunnelScrapesNATHost(t *testing.T, rel prometheusRelease) {
	s := startServer(t)
	const hostname = "e2e-nat-host"
	a := startNATAgent(t, hostname, createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m"), s)
	waitTunnels(t, s, 1)

	// Nothing outside the namespace reaches the agent's listener.
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(a.port), time.Second); err == nil {
		c.Close()
		t.Fatalf("the NAT host's listener is reachable from outside")
	}

	promCert := issueCert(t, s.DataDir, "prometheus", "discovery")
	prom := startPrometheusBinary(t, rel.Binary, tunnelPrometheusConfig(t, s.URL, promCert, s.URL))
	waitQuery(t, prom, `up{job="baremetal-tunneled",exporter="node"}`, "1")
	waitQuery(t, prom, `count(node_load1{job="baremetal-tunneled"})`, "1")
	waitQuery(t, prom, `up{job="direct",exporter="node"}`, "0")

	// Hostile CONNECTs: an agent's certificate, an unknown host, another
	// port of the tunneled host.
	agentCert := loadKeyPair(t, filepath.Join(a.stateDir, "cert.pem"), filepath.Join(a.stateDir, "key.pem"))
	relay := net.JoinHostPort(hostname, strconv.Itoa(a.port))
	for _, tc := range []struct {
		name   string
		cert   tls.Certificate
		target string
		want   int
	}{
		{"agent certificate", agentCert, relay, http.StatusForbidden},
		{"unknown host", promCert.KeyPair, "e2e-other:" + strconv.Itoa(a.port), http.StatusNotFound},
		{"another port", promCert.KeyPair, hostname + ":22", http.StatusForbidden},
		{"the server itself", promCert.KeyPair, s.Addr, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := connectStatus(t, s, tc.cert, tc.target); got != tc.want {
				t.Fatalf("CONNECT %s: %d, want %d", tc.target, got, tc.want)
			}
		})
	}

	t.Run("flood and slowloris", func(t *testing.T) {
		// Bounded: 300 CONNECTs from 30 clients, 100 connections that send
		// half a request and stall.
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(s.caPEM(t))
		var stalled []net.Conn
		defer func() {
			for _, c := range stalled {
				c.Close()
			}
		}()
		for range 100 {
			c, err := tls.Dial("tcp", s.Addr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{promCert.KeyPair}, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHo", relay)
			stalled = append(stalled, c)
		}
		var wg sync.WaitGroup
		for range 30 {
			wg.Go(func() {
				for range 10 {
					connectStatus(t, s, promCert.KeyPair, "e2e-flood:1")
				}
			})
		}
		wg.Wait()
		waitQuery(t, prom, `up{job="baremetal-tunneled",exporter="node"} == 1 and time() - timestamp(up{job="baremetal-tunneled",exporter="node"}) < 3`, "1")
		if a.proc.exited() {
			t.Fatal("the agent died")
		}
	})

	t.Run("server restart", func(t *testing.T) {
		s.restart(t)
		waitTunnels(t, s, 1)
		waitQuery(t, prom, `up{job="baremetal-tunneled",exporter="node"} == 1 and time() - timestamp(up{job="baremetal-tunneled",exporter="node"}) < 3`, "1")
	})

	t.Run("revoke", func(t *testing.T) {
		admin := issueCert(t, s.DataDir, "ops", "admin")
		id := agentID(t, a.stateDir)
		mustRequest(t, s.client(t, admin.KeyPair), http.MethodDelete, s.URL+protocol.PathAgents+"/"+id, "", nil, http.StatusOK)
		waitTunnels(t, s, 0)
		if got := connectStatus(t, s, promCert.KeyPair, relay); got != http.StatusNotFound {
			t.Fatalf("CONNECT to the revoked agent: %d, want 404", got)
		}
	})
}

// agentID reads the agent id from an agent's state directory.
func agentID(t *testing.T, stateDir string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(stateDir, "agent.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(data, &st); err != nil || st.AgentID == "" {
		t.Fatalf("no agent id in %s: %v", data, err)
	}
	return st.AgentID
}

// failover is a TCP load balancer on loopback in front of server replicas:
// each connection goes to the first replica that accepts it, as a TCP
// load balancer with health checks would send it. TLS passes through.
func failover(t *testing.T, to ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return forward(t, l, func() (net.Conn, error) {
		var err error
		for _, addr := range to {
			var out net.Conn
			if out, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
				return out, nil
			}
		}
		return nil, err
	})
}

// TestTunnel_ReplicaLost: the agent keeps a tunnel to each of two replicas
// on etcd; Prometheus reaches them through a load balancer. Killing the
// replica that Prometheus' scrapes went through moves them to the other,
// which holds a tunnel of its own.
func TestTunnel_ReplicaLost(t *testing.T) {
	h := startHA(t)
	const hostname = "e2e-nat-ha"
	startNATAgent(t, hostname, h.enrollTok, h.a, h.b)
	waitTunnels(t, h.a, 1)
	waitTunnels(t, h.b, 1)

	promCert := issueCert(t, h.a.DataDir, "prometheus", "discovery")
	lb := failover(t, h.a.Addr, h.b.Addr)
	prom := startPrometheus(t, tunnelPrometheusConfig(t, "https://"+lb, promCert, "https://"+lb))
	fresh := `up{job="baremetal-tunneled",exporter="node"} == 1 and time() - timestamp(up{job="baremetal-tunneled",exporter="node"}) < 3`
	waitQuery(t, prom, fresh, "1")
	before, err := serverMetric(t, h.b, "baremetal_sd_tunnel_streams_opened_total")
	if err != nil {
		t.Fatal(err)
	}

	if err := h.a.kill(); err != nil {
		t.Fatal(err)
	}
	// Scrapes resume through b, and b forwards them.
	waitQuery(t, prom, fresh, "1")
	waitFor(t, startTimeout, func() error {
		after, err := serverMetric(t, h.b, "baremetal_sd_tunnel_streams_opened_total")
		if err == nil && after <= before {
			err = fmt.Errorf("replica b opened no stream since a was killed (%v)", after)
		}
		return err
	})
}

// TestTunnel_ServerNamesReserved: no agent registers a name the server was
// given with --tls.server-name, which proxy_url names; the default names
// and loopback stay free.
func TestTunnel_ServerNamesReserved(t *testing.T) {
	s := startServer(t, "--tls.server-name=127.0.0.1", "--tls.server-name=sd.e2e.test")
	tok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")
	for _, tc := range []struct {
		hostname string
		want     int
	}{
		{"sd.e2e.test", http.StatusBadRequest},
		{"SD.E2E.TEST", http.StatusBadRequest},
		{"host.e2e.test", http.StatusOK},
		{"localhost", http.StatusOK},
	} {
		t.Run(tc.hostname, func(t *testing.T) {
			status, _, err := tryRegister(t.Context(), t, s, tok, tc.hostname)
			if err != nil {
				t.Fatal(err)
			}
			if status != tc.want {
				t.Fatalf("register %s: %d, want %d", tc.hostname, status, tc.want)
			}
		})
	}
}
