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
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
)

// startEtcdCluster starts a real n-member etcd cluster for the test.
func startEtcdCluster(t testing.TB, n int) *etcdtest.Cluster { return etcdtest.Start(t, n) }

// haSetup is two server replicas on one etcd cluster, sharing the CA and
// token key (copied, as the documentation tells operators to), plus the
// credentials a test needs.
type haSetup struct {
	etcd *etcdtest.Cluster
	a, b *testServer
	// sdClient reads http_sd with a discovery certificate; it trusts the
	// shared CA, so it works with both replicas.
	sdClient *http.Client
	// scraper scrapes agents with the same certificate, trusting the
	// shared agent CA.
	scraper   *http.Client
	enrollTok string
	adminTok  string
}

// requireEtcdSupport skips the test unless etcd is installed and the
// binary has the etcd store wired in.
func requireEtcdSupport(t *testing.T) {
	t.Helper()
	out, _ := exec.Command(binary, "server", "--help").CombinedOutput()
	if !bytes.Contains(out, []byte("--etcd.endpoints")) {
		t.Fatalf("the server binary %s has no --etcd.endpoints flag", binary)
	}
}

func startHA(t *testing.T, args ...string) *haSetup {
	t.Helper()
	requireEtcdSupport(t)
	h := &haSetup{etcd: startEtcdCluster(t, 3)}
	common := []string{"--storage.backend=etcd", "--etcd.prefix=/e2e/", "--log.level=info"}
	for _, ep := range h.etcd.Endpoints() {
		common = append(common, "--etcd.endpoints="+ep)
	}
	common = append(common, args...)
	// Both replicas run on this host: the default replica id, the
	// hostname, would be taken twice.
	h.a = startServer(t, append(common, "--etcd.replica-id=a")...)

	dirB := replicaDataDir(t, h.a.DataDir)
	h.b = startServer(t, append(common, "--data.dir="+dirB, "--etcd.replica-id=b")...)

	prom := issueCert(t, h.a.DataDir, "prometheus", "discovery")
	h.sdClient = h.a.client(t, prom.KeyPair)
	h.scraper = h.a.agentClient(t, prom.KeyPair)
	h.enrollTok = createToken(t, h.a.DataDir, "--scope=enroll", "--ttl=10m")
	h.adminTok = createToken(t, h.a.DataDir, "--scope=admin", "--ttl=10m")
	return h
}

// sdIDs reads http_sd of s and returns the agent ids in it, sorted. It does
// not touch t, so it suits waitFor conditions.
func (h *haSetup) sdIDs(ctx context.Context, s *testServer) ([]string, error) {
	resp, err := doRequest(ctx, h.sdClient, http.MethodGet, s.URL+protocol.PathDiscovery, "", nil)
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusOK {
		return nil, fmt.Errorf("http_sd of %s: status %d: %s", s.Addr, resp.Status, resp.Body)
	}
	groups, err := checkSDBody(resp.Body)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, g := range groups {
		seen[g.Labels[protocol.MetaAgentID]] = true
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// agents reads the admin list of s.
func (h *haSetup) agents(ctx context.Context, t testing.TB, s *testServer) (map[string]discovery.AgentView, error) {
	resp, err := doRequest(ctx, s.client(t), http.MethodGet, s.URL+protocol.PathAgents, h.adminTok, nil)
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusOK {
		return nil, fmt.Errorf("agents of %s: status %d: %s", s.Addr, resp.Status, resp.Body)
	}
	var list []discovery.AgentView
	if err := json.Unmarshal(resp.Body, &list); err != nil {
		return nil, err
	}
	out := make(map[string]discovery.AgentView, len(list))
	for _, a := range list {
		out[a.ID] = a
	}
	return out, nil
}

// waitSD waits until http_sd of every server lists exactly want.
func (h *haSetup) waitSD(t *testing.T, want []string, servers ...*testServer) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	for _, s := range servers {
		waitFor(t, startTimeout, func() error {
			got, err := h.sdIDs(t.Context(), s)
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("http_sd of %s lists %d agents %v, want %d %v", s.Addr, len(got), head(got, 5), len(want), head(want, 5))
			}
			return nil
		})
	}
}

func registerRequest(hostname string) protocol.RegisterRequest {
	return protocol.RegisterRequest{Hostname: hostname, Address: "192.0.2.20", Port: 9956,
		Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}}}
}

// tryRegister attempts one registration through s and returns its status
// and, on success, the agent id. It does not touch t.
func tryRegister(ctx context.Context, t testing.TB, s *testServer, token, hostname string) (int, string, error) {
	req := registerRequest(hostname)
	csr, err := makeCSR(newKey(t), hostname)
	if err != nil {
		return 0, "", err
	}
	req.CSR = csr
	resp, err := doRequest(ctx, s.client(t), http.MethodPost, s.URL+protocol.PathRegister, token, req)
	if err != nil {
		return 0, "", err
	}
	if resp.Status != http.StatusOK {
		return resp.Status, "", nil
	}
	var cr protocol.CertificateResponse
	if err := json.Unmarshal(resp.Body, &cr); err != nil {
		return resp.Status, "", err
	}
	return resp.Status, cr.AgentID, nil
}

func TestHA_ReplicasShareRegistry(t *testing.T) {
	t.Parallel()
	h := startHA(t)

	// Registrations through either replica show up in both http_sd.
	var ids []string
	enrolled := map[string]*testAgent{}
	for i, s := range []*testServer{h.a, h.b, h.a, h.b} {
		ag := enroll(t, s, h.enrollTok, registerRequest(fmt.Sprintf("ha-%d", i)))
		ids = append(ids, ag.ID)
		enrolled[ag.ID] = ag
	}
	h.waitSD(t, ids, h.a, h.b)

	// An agent enrolled through a may heartbeat through b.
	first := enrolled[ids[0]]
	mustRequest(t, h.b.client(t, first.Cert), http.MethodPost, h.b.URL+protocol.PathHeartbeat, "", nil, http.StatusOK)

	// A single-use token is used up on every replica.
	single := createToken(t, h.a.DataDir, "--scope=enroll", "--single-use", "--ttl=10m")
	status, id, err := tryRegister(t.Context(), t, h.a, single, "ha-single")
	if err != nil || status != http.StatusOK {
		t.Fatalf("first use of a single-use token: status %d, %v", status, err)
	}
	ids = append(ids, id)
	status, _, err = tryRegister(t.Context(), t, h.b, single, "ha-single-again")
	if err != nil || (status != http.StatusUnauthorized && status != http.StatusForbidden) {
		t.Fatalf("second use of a single-use token through the other replica: status %d, %v; want 401 or 403", status, err)
	}

	// A revocation through b reaches a: the agent leaves a's http_sd and its
	// certificate is refused there.
	revoked := ids[0]
	if resp := mustRequest(t, h.b.client(t), http.MethodDelete, h.b.URL+protocol.PathAgents+"/"+revoked, h.adminTok, nil, 0); resp.Status/100 != 2 {
		t.Fatalf("revoke through b: status %d: %s", resp.Status, resp.Body)
	}
	h.waitSD(t, ids[1:], h.a, h.b)
	waitFor(t, startTimeout, func() error {
		resp, err := doRequest(t.Context(), h.a.client(t, first.Cert), http.MethodPost, h.a.URL+protocol.PathHeartbeat, "", nil)
		if err != nil {
			return err
		}
		if resp.Status != http.StatusUnauthorized && resp.Status != http.StatusForbidden {
			return fmt.Errorf("heartbeat of a revoked agent through the other replica: status %d", resp.Status)
		}
		return nil
	})
}

func TestHA_ReplicaSIGKILL(t *testing.T) {
	t.Parallel()
	// The burst's agents never heartbeat: the TTL keeps them in http_sd
	// for the whole test. The real agent heartbeats every 7.5s.
	h := startHA(t, "--agent.ttl=30s")

	// A real agent that knows both replicas, a first.
	ag := startAgent(t, h.a, agentOptions{Token: h.enrollTok, Args: []string{"--discovery.url=" + h.b.URL}})
	scraper := h.scraper
	ag.waitState(t, scraper, "registered")
	agentID := ag.id(t)

	// Registrations in flight through a when it dies: every acknowledged one
	// must be on b, in its registry and its http_sd.
	res := registrationBurst(t, h.a, h.enrollTok, 0, 150)
	if len(res.errs) > 0 {
		t.Errorf("%d registrations failed before the kill, e.g. %v", len(res.errs), head(res.errs, 5))
	}
	killed := time.Now()
	t.Logf("%d attempts, %d acknowledged before replica a died", res.attempts, len(res.acked))
	waitFor(t, startTimeout, func() error {
		stored, err := h.agents(t.Context(), t, h.b)
		if err != nil {
			return err
		}
		var lost []string
		for _, id := range res.acked {
			if _, ok := stored[id]; !ok {
				lost = append(lost, id)
			}
		}
		if len(lost) > 0 {
			return fmt.Errorf("%d of %d acknowledged registrations missing on b, e.g. %v", len(lost), len(res.acked), head(lost, 5))
		}
		return nil
	})
	ids, err := h.sdIDs(t.Context(), h.b)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range append(res.acked, agentID) {
		if _, ok := slices.BinarySearch(ids, id); !ok {
			t.Fatalf("agent %s missing from b's http_sd", id)
		}
	}

	// The agent fails over to b: a heartbeat after a died can only have
	// gone through b.
	waitFor(t, startTimeout, func() error {
		stored, err := h.agents(t.Context(), t, h.b)
		if err != nil {
			return err
		}
		v := stored[agentID]
		if v.State != discovery.StateHealthy || !v.LastSeen.After(killed) {
			return fmt.Errorf("agent on b: state %s, last seen %v; want healthy and seen after a died (%v)", v.State, v.LastSeen, killed)
		}
		return nil
	})

	// a comes back with everything.
	h.a.restart(t)
	stored, err := h.agents(t.Context(), t, h.a)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range append(res.acked, agentID) {
		if _, ok := stored[id]; !ok {
			t.Fatalf("agent %s missing on a after its restart", id)
		}
	}
}

func TestHA_EtcdFailures(t *testing.T) {
	t.Parallel()
	h := startHA(t)
	var ids []string
	for i, s := range []*testServer{h.a, h.b} {
		ids = append(ids, enroll(t, s, h.enrollTok, registerRequest(fmt.Sprintf("ha-etcd-%d", i))).ID)
	}
	h.waitSD(t, ids, h.a, h.b)

	// One member down, the leader at that: registrations go on. One that
	// races the election may be refused (503, never acknowledged); the next
	// one is accepted.
	h.etcd.Kill(h.etcd.Leader())
	var id string
	waitFor(t, startTimeout, func() error {
		status, got, err := tryRegister(t.Context(), t, h.b, h.enrollTok, "ha-etcd-member-down")
		if err != nil {
			return fmt.Errorf("register with one etcd member down: %w", err)
		}
		if status != http.StatusOK {
			return fmt.Errorf("register with one etcd member down: status %d", status)
		}
		id = got
		return nil
	})
	ids = append(ids, id)
	h.waitSD(t, ids, h.a, h.b)

	// etcd entirely down: registrations are refused, not acknowledged;
	// http_sd keeps serving the last known targets; /-/ready says so.
	h.etcd.KillAll()
	ctx, cancel := context.WithTimeout(t.Context(), 2*requestTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range []*testServer{h.a, h.b} {
		wg.Go(func() {
			status, _, err := tryRegister(ctx, t, s, h.enrollTok, "ha-etcd-down")
			if err != nil || status != http.StatusServiceUnavailable {
				t.Errorf("register through %s with etcd down: status %d, %v; want 503", s.Addr, status, err)
			}
		})
	}
	wg.Wait()
	for _, s := range []*testServer{h.a, h.b} {
		got, err := h.sdIDs(t.Context(), s)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, slices.Sorted(slices.Values(ids))) {
			t.Errorf("http_sd of %s with etcd down lists %v, want %v", s.Addr, got, ids)
		}
		waitFor(t, startTimeout, func() error {
			resp, err := doRequest(t.Context(), s.client(t), http.MethodGet, s.URL+"/-/ready", "", nil)
			if err != nil {
				return err
			}
			if resp.Status != http.StatusServiceUnavailable {
				return fmt.Errorf("/-/ready of %s with etcd down: status %d, want 503", s.Addr, resp.Status)
			}
			return nil
		})
		if err := storeUp(t, s, 0); err != nil {
			t.Error(err)
		}
	}

	// etcd back: both replicas recover by themselves.
	h.etcd.StartAll()
	for _, s := range []*testServer{h.a, h.b} {
		s.waitReady(t)
		if err := storeUp(t, s, 1); err != nil {
			t.Error(err)
		}
	}
	waitFor(t, startTimeout, func() error {
		status, got, err := tryRegister(t.Context(), t, h.a, h.enrollTok, "ha-etcd-back")
		if err != nil {
			return fmt.Errorf("register after etcd came back: %w", err)
		}
		if status != http.StatusOK {
			return fmt.Errorf("register after etcd came back: status %d", status)
		}
		id = got
		return nil
	})
	ids = append(ids, id)
	h.waitSD(t, ids, h.a, h.b)
}

// storeUp checks the server's baremetal_sd_store_up gauge.
func storeUp(t *testing.T, s *testServer, want int) error {
	resp, err := doRequest(t.Context(), s.client(t), http.MethodGet, s.URL+"/metrics", "", nil)
	if err != nil {
		return err
	}
	line := fmt.Sprintf("baremetal_sd_store_up %d", want)
	for l := range strings.SplitSeq(string(resp.Body), "\n") {
		if l == line {
			return nil
		}
	}
	return fmt.Errorf("metrics of %s lack %q", s.Addr, line)
}

// TestHA_RestartedReplicaKeepsExpiry restarts one replica while the other
// runs: an agent that stopped heartbeating more than a TTL ago stays
// expired on the restarted replica, instead of getting the restart grace
// that only a full outage deserves. The heartbeating agent stays healthy.
func TestHA_RestartedReplicaKeepsExpiry(t *testing.T) {
	t.Parallel()
	h := startHA(t, "--agent.ttl=8s")
	dead := enroll(t, h.a, h.enrollTok, registerRequest("ha-dead"))
	alive := enroll(t, h.a, h.enrollTok, registerRequest("ha-alive"))
	beat := func() error {
		_, err := doRequest(t.Context(), h.b.client(t, alive.Cert), http.MethodPost, h.b.URL+protocol.PathHeartbeat, "", nil)
		return err
	}
	// Both replicas see dead expire while alive heartbeats through b.
	for _, s := range []*testServer{h.a, h.b} {
		waitFor(t, startTimeout, func() error {
			if err := beat(); err != nil {
				return err
			}
			stored, err := h.agents(t.Context(), t, s)
			if err != nil {
				return err
			}
			if st := stored[dead.ID].State; st != discovery.StateExpired {
				return fmt.Errorf("dead agent on %s is %s, want expired", s.Addr, st)
			}
			return nil
		})
	}

	h.b.restart(t)
	if err := beat(); err != nil {
		t.Fatal(err)
	}
	stored, err := h.agents(t.Context(), t, h.b)
	if err != nil {
		t.Fatal(err)
	}
	if st := stored[dead.ID].State; st != discovery.StateExpired {
		t.Errorf("dead agent right after b restarted: %s, want expired (a ran all along)", st)
	}
	if st := stored[alive.ID].State; st != discovery.StateHealthy {
		t.Errorf("heartbeating agent right after b restarted: %s, want healthy", st)
	}
	ids, err := h.sdIDs(t.Context(), h.b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{alive.ID}) {
		t.Errorf("http_sd of the restarted replica lists %v, want only %s", ids, alive.ID)
	}
	resp := mustRequest(t, h.b.client(t), http.MethodGet, h.b.URL+"/metrics", "", nil, http.StatusOK)
	if !bytes.Contains(resp.Body, []byte("\nbaremetal_sd_store_etcd_write_requests_total ")) {
		t.Error("no baremetal_sd_store_etcd_write_requests_total in the replica's metrics")
	}
}

// TestHA_ReplicaRefusesOwnCredentials starts a replica on the shared etcd
// with an empty data directory: it must not create a CA and token key of
// its own, which the other replicas' agents and tokens would not match.
func TestHA_ReplicaRefusesOwnCredentials(t *testing.T) {
	t.Parallel()
	h := startHA(t)
	args := []string{"server", "--storage.backend=etcd", "--etcd.prefix=/e2e/", "--etcd.replica-id=c",
		"--data.dir=" + filepath.Join(t.TempDir(), "data-c"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", freePort(t))}
	for _, ep := range h.etcd.Endpoints() {
		args = append(args, "--etcd.endpoints="+ep)
	}
	log := &logBuffer{}
	dumpOnFailure(t, "baremetal_sd server c", log)
	p := startProcess(t, "baremetal_sd server c", log, serverBinary, args...)
	if !p.wait(startTimeout) {
		_ = p.kill()
		t.Fatal("a replica with an empty data directory started")
	}
	if p.err == nil || !strings.Contains(log.String(), "copy ca.crt, ca.key, token.key, agent-ca.crt, agent-ca.key, client-ca.crt, client-ca.key from a running replica") {
		t.Fatalf("exit %v; want a failure that says to copy the files", p.err)
	}
	if _, err := os.Stat(filepath.Join(args[4][len("--data.dir="):], "ca.crt")); err == nil {
		t.Error("the refused replica created a CA")
	}
}
