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

package registrytest

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
)

// NewEtcdPrefix returns a key prefix no other test uses.
func NewEtcdPrefix() string { return "/test-" + strings.ToLower(rand.Text()) + "/" }

// OpenEtcdStore opens an etcd store on the cluster under prefix, closed when
// the test ends; an empty prefix gets a fresh one. Without a request timeout
// in opts it waits 10 s per request.
func OpenEtcdStore(t testing.TB, c *etcdtest.Cluster, prefix string, opts etcd.Options) *etcd.Store {
	t.Helper()
	if prefix == "" {
		prefix = NewEtcdPrefix()
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
