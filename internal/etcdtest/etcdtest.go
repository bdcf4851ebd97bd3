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

// Package etcdtest runs a real etcd cluster for tests: one process of
// Debian's etcd per member, on free loopback ports, killed when the test
// ends. The etcd store's tests and the high-availability end-to-end tests
// both use it.
package etcdtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/baremetal-sd/baremetal_sd/internal/freeport"
)

// Binary is where Debian's etcd-server package installs etcd;
// scripts/install-test-deps.sh (run by `make test`) installs it.
const Binary = "/usr/bin/etcd"

// Wait bounds every wait for a cluster: generous, because the race
// detector and three etcd processes share small CI machines.
const Wait = 30 * time.Second

// Cluster is a running test cluster.
type Cluster struct {
	t       testing.TB
	members []*member
	// TLS is set when clients must use TLS: the files a client needs.
	TLS *TLSFiles
	// user and password authenticate Client once EnableAuth ran.
	user, password string
}

// Options configure StartWith.
type Options struct {
	// Members is the cluster size (1 unless set).
	Members int
	// TLS serves clients over TLS only, verifying their certificates
	// (--client-cert-auth): certificates are made for the test.
	TLS bool
}

type member struct {
	name      string
	clientURL string
	args      []string
	log       *tailBuffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts an n-member cluster and waits until it serves a
// linearizable read. Members are killed when the test ends, and the tail of
// their output is logged if it failed.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, Options{Members: n})
}

// StartWith starts a cluster as opts say; see Start.
func StartWith(t testing.TB, opts Options) *Cluster {
	t.Helper()
	n := max(opts.Members, 1)
	if _, err := os.Stat(Binary); err != nil {
		t.Fatalf("etcd is not installed at %s: run scripts/install-test-deps.sh (make test does): %v", Binary, err)
	}
	ports := freeport.Ports(t, 2*n)
	dir := t.TempDir()
	peers := make([]string, n)
	for i := range n {
		peers[i] = fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1])
	}
	c := &Cluster{t: t}
	scheme := "http"
	var tlsArgs []string
	if opts.TLS {
		scheme = "https"
		var server TLSFiles
		c.TLS, server = makeCerts(t, dir)
		tlsArgs = []string{
			"--cert-file", server.CertFile, "--key-file", server.KeyFile,
			"--trusted-ca-file", server.CAFile, "--client-cert-auth",
		}
	}
	for i := range n {
		client := fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		c.members = append(c.members, &member{
			name:      fmt.Sprintf("m%d", i),
			clientURL: client,
			log:       &tailBuffer{},
			args: append([]string{
				"--name", fmt.Sprintf("m%d", i),
				"--data-dir", filepath.Join(dir, fmt.Sprintf("m%d", i)),
				"--listen-client-urls", client,
				"--advertise-client-urls", client,
				"--listen-peer-urls", peer,
				"--initial-advertise-peer-urls", peer,
				"--initial-cluster", strings.Join(peers, ","),
				"--initial-cluster-state", "new",
				"--initial-cluster-token", fmt.Sprintf("baremetal-sd-test-%d", ports[0]),
				// Short timings make elections after a kill quick.
				"--heartbeat-interval", "50",
				"--election-timeout", "500",
				"--logger", "zap",
				"--log-outputs", "stderr",
			}, tlsArgs...),
		})
	}
	t.Cleanup(func() {
		c.KillAll()
		if t.Failed() {
			for _, m := range c.members {
				t.Logf("etcd member %s output (tail):\n%s", m.name, m.log.String())
			}
		}
	})
	c.StartAll()
	return c
}

// Endpoints returns the client URLs of all members.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL
	}
	return eps
}

// StartMember starts member i if it is stopped; after a Kill it restarts
// from its data directory. It does not wait for the cluster.
func (c *Cluster) StartMember(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return
	}
	cmd := exec.Command(Binary, m.args...)
	cmd.Stdout = m.log
	cmd.Stderr = m.log
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start etcd member %s: %v", m.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	m.cmd, m.done = cmd, done
}

// StartAll starts every stopped member and waits until the cluster is
// healthy.
func (c *Cluster) StartAll() {
	c.t.Helper()
	for i := range c.members {
		c.StartMember(i)
	}
	c.WaitHealthy()
}

// Kill stops member i with SIGKILL and waits until it is gone.
func (c *Cluster) Kill(i int) {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
	m.cmd = nil
}

// KillAll stops every member with SIGKILL.
func (c *Cluster) KillAll() {
	for i := range c.members {
		c.Kill(i)
	}
}

// Client returns a client of the whole cluster, closed when the test ends.
// It uses the cluster's TLS files and, after EnableAuth, the root user.
func (c *Cluster) Client() *clientv3.Client {
	c.t.Helper()
	cfg := clientv3.Config{
		Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		Username: c.user, Password: c.password,
	}
	if c.TLS != nil {
		cfg.TLS = c.TLS.Config(c.t)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// EnableAuth turns on etcd authentication with a root user (etcd 3.4
// requires one before `auth enable`) and the given password, and a user
// name with read and write access to everything under prefix.
func (c *Cluster) EnableAuth(user, password, prefix string) {
	c.t.Helper()
	cli := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	rootPassword := password + "-root"
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", rootPassword); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "baremetal_sd"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "baremetal_sd", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, user, password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, user, "baremetal_sd"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			c.t.Fatalf("enable etcd auth, step %d: %v", i, err)
		}
	}
	c.user, c.password = "root", rootPassword
}

// WaitHealthy waits until the cluster serves a linearizable read.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	cli := c.Client()
	deadline := time.Now().Add(Wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "health-check")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("etcd cluster not healthy after %v: %v", Wait, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Leader returns the index of the current leader, waiting for an election.
func (c *Cluster) Leader() int {
	c.t.Helper()
	cli := c.Client()
	deadline := time.Now().Add(Wait)
	for {
		for i, m := range c.members {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cli.Status(ctx, m.clientURL)
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return i
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no etcd leader after %v", Wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tailBuffer keeps the last bytes a process wrote, for failure reports.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	const limit = 64 << 10
	b.mu.Lock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > limit {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-limit:]...)
	}
	b.mu.Unlock()
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
