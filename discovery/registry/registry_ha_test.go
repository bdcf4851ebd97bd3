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

package registry

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
)

// TestRegistryHA_RestartGrace: a replica that starts while another one is
// running gives no restart grace (agents could heartbeat through the other
// one all along), while one that starts after every replica was down does.
func TestRegistryHA_RestartGrace(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := context.Background()
	clock := registrytest.NewClock()
	open := func(prefix, replica string) *etcd.Store {
		return registrytest.OpenEtcdStore(t, c, prefix, etcd.Options{ReplicaID: replica, Now: clock.Now})
	}
	prefix := registrytest.NewEtcdPrefix()
	a := open(prefix, "a")
	ra := newTestRegistry(t, a, clock)
	for _, id := range []string{"dead", "alive"} {
		mustPut(t, ra, testAgent(id))
	}
	ra.Flush(ctx)

	// An hour on, with a running: "alive" heartbeats through a, "dead"
	// stopped an hour ago.
	clock.Advance(time.Hour)
	if err := ra.Heartbeat("alive", "s-alive", "", nil); err != nil {
		t.Fatal(err)
	}
	ra.Flush(ctx)
	b := open(prefix, "b")
	rb := newTestRegistry(t, b, clock)
	for id, want := range map[string]discovery.AgentState{"dead": discovery.StateExpired, "alive": discovery.StateHealthy} {
		if v, _ := rb.Get(id); v.State != want {
			t.Errorf("replica started while another ran: %s is %s, want %s", id, v.State, want)
		}
	}

	// Every replica stops; an hour later one starts again: the outage must
	// not drop the agents that were alive before it.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	rc := newTestRegistry(t, open(prefix, "a"), clock)
	// Listed (the grace), but stale: its last heartbeat is an hour old.
	if v, _ := rc.Get("alive"); v.State != discovery.StateStale {
		t.Errorf("after a full outage: alive is %s, want stale (listed by the grace, not healthy)", v.State)
	}
	clock.Advance(61 * time.Second)
	if v, _ := rc.Get("alive"); v.State != discovery.StateExpired {
		t.Errorf("one TTL after a full outage without heartbeat: alive is %s, want expired", v.State)
	}
}

// TestRegistryHA_StoreUpWithoutRequests: baremetal_sd_store_up follows
// etcd's reachability from the flush loop alone, with no request coming in
// and nothing to flush.
func TestRegistryHA_StoreUpWithoutRequests(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := context.Background()
	metrics := collector.NewServer(prometheus.NewRegistry())
	store := registrytest.OpenEtcdStore(t, c, "", etcd.Options{ReplicaID: "a", RequestTimeout: time.Second})
	r := New(Config{Store: store, TTL: time.Minute, Metrics: metrics})
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	up := func() float64 { return testutil.ToFloat64(metrics.StoreUp) }
	metrics.StoreUp.Set(-1)
	r.Flush(ctx)
	if up() != 1 {
		t.Fatalf("store_up %v with etcd running, want 1", up())
	}
	c.KillAll()
	r.Flush(ctx)
	if up() != 0 {
		t.Fatalf("store_up %v with etcd down, want 0", up())
	}
	c.StartAll()
	deadline := time.Now().Add(etcdtest.Wait)
	for r.Flush(ctx); up() != 1; r.Flush(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("store_up %v after etcd came back", up())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRegistryHA_ExporterHealthReachesOtherReplicas: the exporter health an
// agent reports through one replica is written to etcd and shown by the
// other, and by a replica started later.
func TestRegistryHA_ExporterHealthReachesOtherReplicas(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock := registrytest.NewClock()
	prefix := registrytest.NewEtcdPrefix()
	open := func(replica string) *Registry {
		return newTestRegistry(t, registrytest.OpenEtcdStore(t, c, prefix, etcd.Options{ReplicaID: replica, Now: clock.Now}), clock)
	}
	ra := open("a")
	mustPut(t, ra, testAgent("x"))
	bStore := registrytest.OpenEtcdStore(t, c, prefix, etcd.Options{ReplicaID: "b", Now: clock.Now})
	rb := newTestRegistry(t, bStore, clock)
	events := bStore.Watch(ctx)
	go func() {
		for ev := range events {
			rb.ApplyEvent(ev)
		}
	}()

	down := []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown, Reason: "connect: connection refused", Since: clock.Now()}}
	ra.ReportHealth("x", down)
	ra.Flush(ctx)
	deadline := time.Now().Add(etcdtest.Wait)
	for {
		v, ok := rb.Get("x")
		if ok && len(v.ExporterHealth) == 1 && v.ExporterHealth[0].State == protocol.ExporterDown {
			if v.ExporterHealth[0].Reason != down[0].Reason {
				t.Fatalf("other replica: reason %q, want %q", v.ExporterHealth[0].Reason, down[0].Reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("other replica still shows %+v", v.ExporterHealth)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v, _ := open("c").Get("x"); len(v.ExporterHealth) != 1 || v.ExporterHealth[0].State != protocol.ExporterDown {
		t.Fatalf("replica started later: %+v", v.ExporterHealth)
	}
}
