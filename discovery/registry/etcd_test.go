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
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
)

// etcdWait bounds every wait for the test cluster.
const etcdWait = etcdtest.Wait

// newEtcdPrefix returns a key prefix no other test uses.
func newEtcdPrefix() string { return "/test-" + strings.ToLower(rand.Text()) + "/" }

// startEtcdCluster starts a real n-member etcd cluster for the test.
func startEtcdCluster(t testing.TB, n int) *etcdtest.Cluster { return etcdtest.Start(t, n) }

// openTestEtcdStore opens an etcd store on the cluster under prefix; an
// empty prefix gets a fresh one.
func openTestEtcdStore(t testing.TB, c *etcdtest.Cluster, prefix string, opts etcd.Options) *etcd.Store {
	t.Helper()
	if prefix == "" {
		prefix = newEtcdPrefix()
	}
	opts.Endpoints = c.Endpoints()
	opts.Prefix = prefix
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), etcdtest.Wait)
	defer cancel()
	s, err := etcd.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
