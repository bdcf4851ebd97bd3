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

package agent

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/internal/syncbuf"
)

func TestPersistedState_Load(t *testing.T) {
	for _, tc := range []struct {
		name string
		// content is written to agent.json; nil leaves no file.
		content []byte
		// dir makes agent.json a directory.
		dir           bool
		wantErr       string
		ttl, interval int
		agentID       string
	}{
		{name: "no file: nothing known yet"},
		{name: "as the agent writes it", content: []byte(`{"agent_id": "a1", "ttl_seconds": 40, "heartbeat_interval_seconds": 10}`),
			agentID: "a1", ttl: 40, interval: 10},
		{name: "written before the TTL was kept", content: []byte(`{"agent_id": "a1", "heartbeat_interval_seconds": 75}`),
			agentID: "a1", interval: 75},
		{name: "unknown fields of a newer agent", content: []byte(`{"agent_id": "a1", "ttl_seconds": 40, "heartbeat_interval_seconds": 10, "new": true}`),
			agentID: "a1", ttl: 40, interval: 10},
		{name: "a TTL too large to bound anything is the client's to cap", content: []byte(`{"ttl_seconds": 9223372036854775807, "heartbeat_interval_seconds": 10}`),
			ttl: 9223372036854775807, interval: 10},
		{name: "empty", content: []byte{}, wantErr: "unexpected end of JSON input"},
		{name: "cut short", content: []byte(`{"agent_id": "a1", "ttl_seconds": 4`), wantErr: "unexpected end of JSON input"},
		{name: "not JSON", content: []byte("\x00\xff\x13garbage"), wantErr: "invalid character"},
		{name: "TTL as a string", content: []byte(`{"ttl_seconds": "40"}`), wantErr: "cannot unmarshal string"},
		{name: "TTL beyond an int", content: []byte(`{"ttl_seconds": 1e30}`), wantErr: "cannot unmarshal number"},
		{name: "fractional interval", content: []byte(`{"heartbeat_interval_seconds": 7.5}`), wantErr: "cannot unmarshal number"},
		{name: "negative TTL", content: []byte(`{"agent_id": "a1", "ttl_seconds": -40, "heartbeat_interval_seconds": 10}`), wantErr: "negative"},
		{name: "negative interval", content: []byte(`{"agent_id": "a1", "ttl_seconds": 40, "heartbeat_interval_seconds": -10}`), wantErr: "negative"},
		{name: "an array", content: []byte(`[40, 10]`), wantErr: "cannot unmarshal array"},
		{name: "larger than the bound", content: []byte(`{"agent_id": "` + strings.Repeat("a", maxStateFile) + `"}`), wantErr: "file too large"},
		{name: "a directory", dir: true, wantErr: "is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), StateFile)
			switch {
			case tc.dir:
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			case tc.content != nil:
				if err := os.WriteFile(path, tc.content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			p, err := loadPersisted(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("loadPersisted() error = %v, want one containing %q", err, tc.wantErr)
				}
				if p != (persistedState{}) {
					t.Errorf("loadPersisted() = %+v with an error, want the zero state", p)
				}
				return
			}
			if err != nil {
				t.Fatalf("loadPersisted(): %v", err)
			}
			if p.AgentID != tc.agentID || p.TTLSeconds != tc.ttl || p.HeartbeatIntervalSeconds != tc.interval {
				t.Errorf("loadPersisted() = %+v, want agent %q, TTL %d, interval %d", p, tc.agentID, tc.ttl, tc.interval)
			}
		})
	}
}

func TestPersistedState_StoreLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, StateFile)
	want := persistedState{
		AgentID: "a1", Registration: "digest", CertSerial: "1f",
		RenewAfter: time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC), TTLSeconds: 40, HeartbeatIntervalSeconds: 10,
		UpdatedAt: time.Date(2026, 12, 6, 19, 0, 0, 0, time.UTC),
	}
	for range 2 { // the second write replaces the first
		if err := savePersisted(path, want); err != nil {
			t.Fatal(err)
		}
	}
	got, err := loadPersisted(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("loaded %+v, want %+v", got, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state directory holds %d files, want only %s (no temporary file left)", len(entries), StateFile)
	}
}

// timingLifecycle is a lifecycle whose clients talk to nobody: enough to
// take servers' replies.
func timingLifecycle(t *testing.T, logs *syncbuf.Buffer) *lifecycle {
	t.Helper()
	l, _ := newTestLifecycle(t)
	l.logger = slog.New(slog.NewTextHandler(logs, nil))
	for _, c := range []**client.Client{&l.client, &l.anon} {
		var err error
		if *c, err = client.NewClient(client.Config{URLs: []string{"https://sd.invalid"}}); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// TestLifecycle_NoteServerTiming: what the servers say lands in agent.json,
// written only when it changes, kept when a reply lacks it, and a failed
// write is logged once and retried.
func TestLifecycle_NoteServerTiming(t *testing.T) {
	type reply struct{ ttl, interval int }
	for _, tc := range []struct {
		name    string
		stored  persistedState
		replies []reply
		// wantTTL and wantInterval are what agent.json holds after the
		// replies; wantWrites how often it was written.
		wantTTL, wantInterval, wantWrites int
	}{
		{name: "first answer is stored", replies: []reply{{40, 10}}, wantTTL: 40, wantInterval: 10, wantWrites: 1},
		{name: "the same answer again is not written again", stored: persistedState{TTLSeconds: 40, HeartbeatIntervalSeconds: 10},
			replies: []reply{{40, 10}, {40, 10}}, wantTTL: 40, wantInterval: 10},
		{name: "a changed TTL is stored", stored: persistedState{TTLSeconds: 40, HeartbeatIntervalSeconds: 10},
			replies: []reply{{40, 10}, {300, 10}}, wantTTL: 300, wantInterval: 10, wantWrites: 1},
		{name: "a changed interval is stored", stored: persistedState{TTLSeconds: 300, HeartbeatIntervalSeconds: 75},
			replies: []reply{{300, 30}}, wantTTL: 300, wantInterval: 30, wantWrites: 1},
		{name: "an older server's zeros keep what is known", stored: persistedState{TTLSeconds: 40, HeartbeatIntervalSeconds: 10},
			replies: []reply{{0, 0}, {0, 10}}, wantTTL: 40, wantInterval: 10},
		{name: "a TTL to a state without one", stored: persistedState{AgentID: "a1", HeartbeatIntervalSeconds: 75},
			replies: []reply{{300, 75}}, wantTTL: 300, wantInterval: 75, wantWrites: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncbuf.Buffer{}
			l := timingLifecycle(t, logs)
			path := l.path(StateFile)
			if err := savePersisted(path, tc.stored); err != nil {
				t.Fatal(err)
			}
			l.persisted = tc.stored
			writes := 0
			for _, r := range tc.replies {
				before, _ := os.Stat(path)
				l.noteServerTiming(r.ttl, r.interval)
				after, _ := os.Stat(path)
				if !os.SameFile(before, after) {
					writes++
				}
			}
			p, err := loadPersisted(path)
			if err != nil {
				t.Fatal(err)
			}
			if p.TTLSeconds != tc.wantTTL || p.HeartbeatIntervalSeconds != tc.wantInterval {
				t.Errorf("stored TTL %d, interval %d; want %d, %d", p.TTLSeconds, p.HeartbeatIntervalSeconds, tc.wantTTL, tc.wantInterval)
			}
			if p.AgentID != tc.stored.AgentID {
				t.Errorf("stored agent id %q, want %q kept", p.AgentID, tc.stored.AgentID)
			}
			if writes != tc.wantWrites {
				t.Errorf("agent.json written %d times, want %d", writes, tc.wantWrites)
			}
		})
	}

	t.Run("a failed write is logged once and retried", func(t *testing.T) {
		logs := &syncbuf.Buffer{}
		l := timingLifecycle(t, logs)
		l.cfg.StateDir = filepath.Join(t.TempDir(), "gone")
		for range 3 {
			l.noteServerTiming(40, 10)
		}
		if n := strings.Count(logs.String(), "Could not store the servers' TTL"); n != 1 {
			t.Errorf("%d warnings for 3 failed writes, want 1:\n%s", n, logs)
		}
		if err := os.Mkdir(l.cfg.StateDir, 0o700); err != nil {
			t.Fatal(err)
		}
		l.noteServerTiming(40, 10)
		p, err := loadPersisted(l.path(StateFile))
		if err != nil || p.TTLSeconds != 40 || p.HeartbeatIntervalSeconds != 10 {
			t.Errorf("after the directory came back: %+v, %v; want TTL 40 and interval 10 stored", p, err)
		}
	})
}

// frozenServer is a discovery server that accepts connections and TLS
// handshakes but never answers a request, as a SIGSTOPped replica behind a
// listening socket, or a network that holds the bytes. Before it freezes,
// it may pass requests on to another server.
type frozenServer struct {
	srv      *httptest.Server
	hits     atomic.Int32
	firstHit atomic.Int64 // Unix nanoseconds of the first request held
	release  chan struct{}
	// pass is how many requests go to next before the server freezes.
	pass atomic.Int32
	next http.Handler
}

func newFrozenServer(t *testing.T, ca *testCA) *frozenServer {
	t.Helper()
	f := &frozenServer{release: make(chan struct{})}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.pass.Add(-1) >= 0 {
			f.next.ServeHTTP(w, r)
			return
		}
		if f.hits.Add(1) == 1 {
			f.firstHit.Store(time.Now().UnixNano())
		}
		select {
		case <-r.Context().Done():
		case <-f.release:
		}
	}))
	ca.startServer(t, f.srv, "frozen")
	t.Cleanup(func() { close(f.release) })
	return f
}

// passTo makes the frozen server relay its first n requests to the fake
// server. A relayed request carries no client certificate: only what a
// token authenticates works through it.
func (f *frozenServer) passTo(t *testing.T, fake *fakeServer, n int32) {
	target, err := url.Parse(fake.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fake.ca.pool}}
	f.next = proxy
	f.pass.Store(n)
}

// reachesWithinTTL waits for the fake server to get a heartbeat more than
// beats, and fails the test unless it does within TTL − interval of the
// frozen server holding the first one: the time a heartbeat has before
// the agent expires.
func reachesWithinTTL(t *testing.T, h *harness, frozen *frozenServer, beats int, ttl, interval time.Duration) {
	t.Helper()
	h.waitFor("a heartbeat to reach the frozen server", func() bool { return frozen.hits.Load() > 0 })
	deadline := time.Unix(0, frozen.firstHit.Load()).Add(ttl - interval)
	for h.fake.count("heartbeat") <= beats {
		if time.Now().After(deadline) {
			t.Fatalf("the heartbeat held by the frozen server did not reach the other one within TTL − interval (%s)", ttl-interval)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRun_FirstHeartbeatAfterRestartFailsOverWithinTTL: an agent restarted
// while the server it talks to first is frozen must reach the other one
// before its TTL runs out, on its very first heartbeat, before any server
// has answered it in this run. The TTL and interval the servers said
// before the restart come from agent.json; without them the heartbeat
// waited out the 30 s request timeout on the frozen server.
func TestRun_FirstHeartbeatAfterRestartFailsOverWithinTTL(t *testing.T) {
	const ttl, interval = 10, 1
	h := newHarness(t)
	h.fake.agentTTL.Store(ttl)
	h.fake.interval.Store(interval)
	cfg := h.config()
	cfg.RequestTimeout = 0 // the 30 s default, which a 10 s TTL must bound
	cfg.DeregisterOnShutdown = false
	r, id := h.enrolled(cfg)
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	p, err := loadPersisted(filepath.Join(h.dir, StateFile))
	if err != nil || p.TTLSeconds != ttl || p.HeartbeatIntervalSeconds != interval {
		t.Fatalf("agent.json after the first run: %+v, %v; want TTL %d and interval %d", p, err, ttl, interval)
	}

	frozen := newFrozenServer(t, h.ca)
	cfg.DiscoveryURLs = []string{frozen.srv.URL, h.fake.srv.URL}
	beats := h.fake.count("heartbeat")
	h.start(cfg)
	// The restarted agent heartbeats at once, so the time since its last
	// heartbeat before the restart only makes TTL − interval generous.
	reachesWithinTTL(t, h, frozen, beats, ttl*time.Second, interval*time.Second)
	if n := h.fake.count("register:token") + h.fake.count("register:mtls"); n != 1 {
		t.Errorf("registrations = %d, want only the first enrollment", n)
	}
	if ids := h.fake.agentIDs(); len(ids) != 1 || ids[0] != id {
		t.Errorf("agents = %v, want [%s]", ids, id)
	}
}

// TestRun_FirstHeartbeatAfterEnrollmentFailsOverWithinTTL: the enrollment
// with a token goes through the agent's anonymous client; its reply must
// bound the heartbeat client as well, or the first heartbeat after the
// enrollment waits out the 30 s request timeout on a server that froze
// since.
func TestRun_FirstHeartbeatAfterEnrollmentFailsOverWithinTTL(t *testing.T) {
	const ttl, interval = 10, 1
	h := newHarness(t)
	h.fake.agentTTL.Store(ttl)
	h.fake.interval.Store(interval)
	frozen := newFrozenServer(t, h.ca)
	frozen.passTo(t, h.fake, 1) // the enrollment, then nothing
	cfg := h.config()
	cfg.RequestTimeout = 0
	cfg.DiscoveryURLs = []string{frozen.srv.URL, h.fake.srv.URL}
	h.writeToken("good-token", true)
	h.start(cfg)
	h.waitFor("the enrollment through the first server", func() bool { return h.fake.count("register:token") == 1 })
	reachesWithinTTL(t, h, frozen, 0, ttl*time.Second, interval*time.Second)
}

// TestRun_KeepsServerTimingCurrent: agent.json follows what the servers
// say, from the enrollment on and when a heartbeat's answer changes.
func TestRun_KeepsServerTimingCurrent(t *testing.T) {
	h := newHarness(t)
	h.fake.agentTTL.Store(40)
	h.fake.interval.Store(1)
	h.enrolled(h.config())
	stored := func(ttl, interval int) func() bool {
		return func() bool {
			p, err := loadPersisted(filepath.Join(h.dir, StateFile))
			return err == nil && p.TTLSeconds == ttl && p.HeartbeatIntervalSeconds == interval
		}
	}
	h.waitFor("the enrollment's TTL and interval in agent.json", stored(40, 1))
	h.fake.agentTTL.Store(20)
	h.fake.interval.Store(2)
	h.waitFor("the heartbeat's new TTL and interval in agent.json", stored(20, 2))
	fi, err := os.Stat(filepath.Join(h.dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("agent.json mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestRun_UnusableStateFileDoesNotStopTheAgent: a garbled agent.json is
// logged once and the agent goes on, registering again (the file also
// held its registration) and storing what the server says afresh.
func TestRun_UnusableStateFileDoesNotStopTheAgent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
	}{
		{name: "garbled", content: "{\"ttl_seconds\": 4\x00\xff"},
		{name: "empty", content: ""},
		{name: "negative TTL", content: `{"ttl_seconds": -40, "heartbeat_interval_seconds": 10}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.fake.agentTTL.Store(40)
			cfg := h.config()
			cfg.DeregisterOnShutdown = false
			r, _ := h.enrolled(cfg)
			if err := r.stop(); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(h.dir, StateFile), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			h.start(cfg)
			h.waitFor("the agent to register again", func() bool { return h.fake.count("register:mtls") == 1 })
			h.waitFor("the agent to be registered", func() bool { return h.metric(stateSeries("registered")) == 1 })
			h.waitFor("a usable agent.json", func() bool {
				p, err := loadPersisted(filepath.Join(h.dir, StateFile))
				return err == nil && p.TTLSeconds == 40
			})
			if n := strings.Count(h.logs.String(), "Ignoring unreadable agent state"); n != 1 {
				t.Errorf("logged the unusable agent.json %d times, want once", n)
			}
		})
	}
}
