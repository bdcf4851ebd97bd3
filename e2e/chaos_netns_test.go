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
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The chaos harness puts every real agent in a network namespace of its
// own, so that its network can be cut by taking its link down. Addresses
// come from 198.18.0.0/15 (RFC 2544, reserved for network tests) and exist
// only inside namespaces the harness creates: a hub namespace holds one end
// of each agent's veth pair, the agent's namespace the other. Nothing is
// routed to or from the host's own namespace: the harness' forwarders open
// their sockets inside the hub namespace (setns on a locked thread) and
// relay to 127.0.0.1, where the server and Prometheus listen.

// netnsPrefix starts the name of every namespace and link the harness
// creates. The process id follows it, so that a later run can tell the
// leftovers of a run that was killed before its cleanup (its process is
// gone) from those of a run still going.
const netnsPrefix = "bsdc"

// netLab is the hub namespace and the agents' namespaces of one run.
type netLab struct {
	prefix string // netnsPrefix + pid + a random suffix: unique per run
	hub    string // name of the hub namespace

	mu     sync.Mutex
	agents []string // names of the agents' namespaces, in creation order
}

// requireNetns skips the test where namespaces cannot be made: not root,
// or no iproute2. The chaos harness needs both; `make test` runs as root.
func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the chaos harness creates network namespaces and mounts: it needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the chaos harness needs iproute2's ip")
	}
}

// ipCmd runs ip with args and returns its error with the output.
func ipCmd(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeStaleNamespaces deletes the namespaces named prefix+PID-... that
// test runs left when their process was killed before its cleanup ran
// (PID no longer exists). Deleting a namespace removes its veth links too.
func removeStaleNamespaces(t *testing.T, prefix string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			t.Logf("removing namespace %s left by test run %d", name, pid)
			killNamespacePids(name)
			_ = ipCmd("netns", "del", name)
		}
	}
}

// killNamespacePids SIGKILLs the processes still inside namespace name.
// Only the tests create these namespaces, so everything in one was started
// by a test run.
func killNamespacePids(name string) {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// newNetLab creates the hub namespace of a run; removed when the test ends.
func newNetLab(t *testing.T) *netLab {
	t.Helper()
	requireNetns(t)
	removeStaleNamespaces(t, netnsPrefix)
	// Two scenarios of one process may run at once: a random suffix keeps
	// their names apart.
	l := &netLab{prefix: fmt.Sprintf("%s%d-%04x", netnsPrefix, os.Getpid(), rand.IntN(1<<16))}
	l.hub = l.prefix + "-hub"
	t.Cleanup(l.remove)
	if err := ipCmd("netns", "add", l.hub); err != nil {
		t.Fatal(err)
	}
	if err := ipCmd("-n", l.hub, "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	return l
}

// agentNet is the network of one agent namespace.
type agentNet struct {
	NS       string // namespace name
	HubIP    string // the hub's end of the veth pair
	AgentIP  string // the agent's end
	hubLink  string
	lab      *netLab
	cutMu    sync.Mutex
	cutSince time.Time // zero while the link is up
}

// addAgent creates agent namespace i (0..253) with a veth pair to the hub.
func (l *netLab) addAgent(t *testing.T, i int) *agentNet {
	t.Helper()
	ns := fmt.Sprintf("%s-a%d", l.prefix, i)
	n := &agentNet{
		NS:      ns,
		HubIP:   fmt.Sprintf("198.18.%d.1", i),
		AgentIP: fmt.Sprintf("198.18.%d.2", i),
		lab:     l,
	}
	l.mu.Lock()
	l.agents = append(l.agents, ns)
	l.mu.Unlock()
	// Link names are at most 15 bytes and global until moved: use the
	// pid and run, not the long namespace name, and move them right away.
	base := fmt.Sprintf("bc%s%d", l.prefix[len(l.prefix)-4:], i)
	n.hubLink = base + "h"
	agentLink := base + "a"
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "add", n.hubLink, "netns", l.hub, "type", "veth", "peer", "name", agentLink, "netns", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", n.AgentIP + "/24", "dev", agentLink},
		{"-n", ns, "link", "set", agentLink, "up"},
		{"-n", l.hub, "addr", "add", n.HubIP + "/24", "dev", n.hubLink},
		{"-n", l.hub, "link", "set", n.hubLink, "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// setLink takes the agent's link (the hub end of its cable) down or up.
func (n *agentNet) setLink(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	if err := ipCmd("-n", n.lab.hub, "link", "set", n.hubLink, state); err != nil {
		return err
	}
	n.cutMu.Lock()
	defer n.cutMu.Unlock()
	if up {
		n.cutSince = time.Time{}
	} else if n.cutSince.IsZero() {
		n.cutSince = time.Now()
	}
	return nil
}

// remove kills what is left in the run's namespaces and deletes them. It is
// idempotent: deleting a missing namespace is ignored.
func (l *netLab) remove() {
	l.mu.Lock()
	names := append([]string{l.hub}, l.agents...)
	l.mu.Unlock()
	for _, ns := range names {
		killNamespacePids(ns)
		_ = ipCmd("netns", "del", ns)
	}
}

// inNetns runs fn on an OS thread that has entered namespace ns; sockets
// created by fn stay in ns after the thread has returned to its own.
func inNetns(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own network namespace: %w", err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open network namespace %s: %w", ns, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is in the wrong namespace: leave it locked, so that
		// the runtime ends it with this goroutine instead of reusing it.
		return errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w", ns, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// listenIn opens a TCP listener on addr inside namespace ns.
func listenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// dialIn connects to addr from inside namespace ns.
func dialIn(ctx context.Context, ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() error {
		var err error
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}
