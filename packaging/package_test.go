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

package packaging

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/freeport"
	"github.com/baremetal-sd/baremetal_sd/internal/poll"
)

// Bounds of the waits in this file; a healthy run needs a fraction.
const (
	dpkgTimeout  = 5 * time.Minute
	startTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
	lockTimeout  = 10 * time.Minute
)

// Installed locations, as packaging/nfpm.yaml and the units name them.
const (
	pkgName     = "baremetal-sd"
	serverUnit  = "/lib/systemd/system/baremetal_sd-server.service"
	agentUnit   = "/lib/systemd/system/baremetal_sd-agent.service"
	serverState = "/var/lib/baremetal_sd"
	agentState  = "/var/lib/baremetal_sd-agent"
	confDir     = "/etc/baremetal_sd"
	agentWants  = "/etc/systemd/system/multi-user.target.wants/baremetal_sd-agent.service"
	serverWants = "/etc/systemd/system/multi-user.target.wants/baremetal_sd-server.service"
)

// TestPackage_Lifecycle installs the package on this machine with dpkg,
// checks what it installed, runs the installed server and agent as their
// users the way their units do, reinstalls it over itself, removes it and
// purges it, checking after each step what must be gone and what kept.
func TestPackage_Lifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("installs a package: run as root (make test runs as root in CI)")
	}
	lockPackageTests(t)
	if status := packageStatus(t); status != "" {
		t.Fatalf("%s is already on this machine (%s); the test installs and purges it: dpkg --purge %s first", pkgName, status, pkgName)
	}
	t.Cleanup(func() {
		if packageStatus(t) != "" {
			_, _ = dpkg(t, "--purge", pkgName)
		}
	})

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"install", testInstall},
		{"files", testFiles},
		{"units", testUnits},
		{"run", testRun},
		{"upgrade", testUpgrade},
		{"remove", testRemove},
		{"purge", testPurge},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			t.Fatalf("step %s failed; later steps need it", s.name)
		}
	}
}

// TestPackage_Lintian runs lintian with every check (pedantic and info
// tags too): any tag the package's overrides do not justify fails, and so
// does an override that no longer matches anything.
func TestPackage_Lintian(t *testing.T) {
	lintian, err := exec.LookPath("lintian")
	if err != nil {
		t.Fatal("lintian not found: run scripts/install-test-deps.sh (make test does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), dpkgTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, lintian, "--pedantic", "--display-info", "--fail-on", "error,warning,info,pedantic", deb).CombinedOutput()
	var tags []string
	for _, line := range strings.Split(string(out), "\n") {
		if len(line) > 2 && line[1] == ':' && strings.ContainsRune("EWIPX", rune(line[0])) && !buildDependentUnusedOverride(line) {
			tags = append(tags, line)
		}
	}
	if len(tags) == 0 && err != nil && !strings.Contains(string(out), ": unused-override ") {
		t.Fatalf("lintian: %v\n%s", err, out)
	}
	if len(tags) > 0 {
		t.Fatalf("lintian: %v; fix these or justify an override in packaging/lintian-overrides:\n%s", err, strings.Join(tags, "\n"))
	}
}

// buildDependentOverrides are overrides of tags that lintian finds in
// some builds of the binary and not in others: the "misspelled words" it
// finds in compressed tables and certificates change with every build, so
// the override may or may not be used, and its being unused says nothing.
var buildDependentOverrides = []string{"spelling-error-in-binary"}

// buildDependentUnusedOverride reports whether a lintian line only says
// that one of the buildDependentOverrides went unused in this build.
func buildDependentUnusedOverride(line string) bool {
	for _, tag := range buildDependentOverrides {
		if strings.Contains(line, ": unused-override "+tag+" ") {
			return true
		}
	}
	return false
}

func testInstall(t *testing.T) {
	if out, err := dpkg(t, "--install", deb); err != nil {
		t.Fatalf("dpkg --install: %v\n%s", err, out)
	}
	if status := packageStatus(t); status != "install ok installed" {
		t.Fatalf("package status %q after install", status)
	}
}

func testFiles(t *testing.T) {
	for _, f := range []struct {
		path        string
		mode        fs.FileMode
		owner, grp  string
		wantMissing bool
	}{
		{path: "/usr/bin/baremetal_sd", mode: 0o755, owner: "root", grp: "root"},
		{path: serverUnit, mode: 0o644, owner: "root", grp: "root"},
		{path: agentUnit, mode: 0o644, owner: "root", grp: "root"},
		{path: "/usr/lib/sysusers.d/baremetal_sd.conf", mode: 0o644, owner: "root", grp: "root"},
		{path: confDir, mode: fs.ModeDir | 0o755, owner: "root", grp: "root"},
		{path: confDir + "/relay.yml", mode: 0o644, owner: "root", grp: "root"},
		{path: "/etc/default/baremetal_sd-server", mode: 0o644, owner: "root", grp: "root"},
		{path: "/etc/default/baremetal_sd-agent", mode: 0o644, owner: "root", grp: "root"},
		{path: serverState, mode: fs.ModeDir | 0o700, owner: "baremetal_sd", grp: "baremetal_sd"},
		{path: agentState, mode: fs.ModeDir | 0o700, owner: "baremetal_sd-agent", grp: "baremetal_sd-agent"},
		{path: "/usr/share/man/man1/baremetal_sd.1.gz", mode: 0o644, owner: "root", grp: "root"},
		{path: "/usr/share/bash-completion/completions/baremetal_sd", mode: 0o644, owner: "root", grp: "root"},
		{path: "/usr/share/doc/baremetal-sd/LICENSE", mode: 0o644, owner: "root", grp: "root"},
		{path: "/usr/share/doc/baremetal-sd/NOTICE", mode: 0o644, owner: "root", grp: "root"},
		{path: "/usr/share/doc/baremetal-sd/copyright", mode: 0o644, owner: "root", grp: "root"},
		// The agent is enabled and waits for its configuration; the server
		// runs on one host of the fleet only, enabled there by hand.
		{path: agentWants, mode: fs.ModeSymlink | 0o777, owner: "root", grp: "root"},
		{path: serverWants, wantMissing: true},
	} {
		t.Run(f.path, func(t *testing.T) {
			fi, err := os.Lstat(f.path)
			if f.wantMissing {
				if err == nil {
					t.Fatalf("%s exists", f.path)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != f.mode {
				t.Errorf("mode %v, want %v", fi.Mode(), f.mode)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if u := userName(t, st.Uid); u != f.owner {
				t.Errorf("owner %s, want %s", u, f.owner)
			}
			if g := groupName(t, st.Gid); g != f.grp {
				t.Errorf("group %s, want %s", g, f.grp)
			}
		})
	}

	t.Run("conffiles", func(t *testing.T) {
		out, err := exec.Command("dpkg-query", "--showformat=${Conffiles}", "--show", pkgName).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{confDir + "/relay.yml", "/etc/default/baremetal_sd-server", "/etc/default/baremetal_sd-agent"} {
			if !strings.Contains(string(out), " "+want+" ") {
				t.Errorf("%s is not a conffile: %s", want, out)
			}
		}
	})

	for _, u := range []struct{ name, home string }{
		{"baremetal_sd", serverState},
		{"baremetal_sd-agent", agentState},
	} {
		t.Run("user "+u.name, func(t *testing.T) {
			usr, err := user.Lookup(u.name)
			if err != nil {
				t.Fatal(err)
			}
			if usr.HomeDir != u.home {
				t.Errorf("home %s, want %s", usr.HomeDir, u.home)
			}
			// A system user: below Debian's first regular UID.
			if uid, _ := strconv.Atoi(usr.Uid); uid == 0 || uid >= 1000 {
				t.Errorf("uid %d, want a system user's", uid)
			}
			if _, err := user.LookupGroup(u.name); err != nil {
				t.Error(err)
			}
		})
	}
}

// testUnits verifies the installed units as systemd would load them, with
// the installed binary and man page; verify warns on stdout or stderr
// about anything it does not like, so any output fails.
func testUnits(t *testing.T) {
	out, err := exec.Command("systemd-analyze", "verify", serverUnit, agentUnit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// testRun starts the installed server and agent the way their units do:
// each unit's ExecStart with $ARGS from its /etc/default file, as the
// unit's user. Only the listen addresses and the discovery URL are changed,
// to free ports on 127.0.0.1. The agent enrolls with a token that the
// installed binary creates as the server's user, as the docs say to.
func testRun(t *testing.T) {
	serverPort, agentPort := freeport.Port(t), freeport.Port(t)
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", serverPort)

	srvUser, srvArgs := unitCommand(t, serverUnit, "/etc/default/baremetal_sd-server", map[string]string{
		"--web.listen-address": fmt.Sprintf("127.0.0.1:%d", serverPort),
	})
	stopServer := start(t, srvUser, srvArgs)
	defer stopServer()
	caFile := filepath.Join(serverState, "ca.crt")
	waitFor(t, startTimeout, func() error {
		// The server writes its CA certificate on the first start.
		client, err := httpsClient(caFile)
		if err != nil {
			return err
		}
		resp, err := client.Get(serverURL + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %s", resp.Status)
		}
		return nil
	})

	// Installed but not configured: the agent's unit must not start.
	if unitConditions(t, agentUnit) {
		t.Fatalf("%s would start without an enrollment token or certificate", agentUnit)
	}

	token, err := runAs(t, "baremetal_sd", "/usr/bin/baremetal_sd", "token", "create", "--data.dir="+serverState, "--scope=enroll", "--ttl=10m")
	if err != nil {
		t.Fatalf("token create as baremetal_sd: %v\n%s", err, token)
	}
	install(t, caFile, confDir+"/ca.crt", 0o644, "root")
	writeFile(t, confDir+"/enroll.token", []byte(token), 0o640, "baremetal_sd-agent")
	if !unitConditions(t, agentUnit) {
		t.Fatalf("%s would not start with %s/enroll.token in place", agentUnit, confDir)
	}

	// The users are apart: the agent, which talks to the network and reads
	// exporters' secrets, cannot read the fleet's CA key.
	if out, err := runAs(t, "baremetal_sd-agent", "/bin/cat", filepath.Join(serverState, "ca.key")); err == nil {
		t.Fatalf("baremetal_sd-agent read the CA key:\n%s", out)
	}

	agtUser, agtArgs := unitCommand(t, agentUnit, "/etc/default/baremetal_sd-agent", map[string]string{
		"--discovery.url":      serverURL,
		"--web.listen-address": fmt.Sprintf("127.0.0.1:%d", agentPort),
	})
	stopAgent := start(t, agtUser, agtArgs)
	defer stopAgent()

	waitFor(t, startTimeout, func() error {
		out, err := runAs(t, "baremetal_sd", "/usr/bin/baremetal_sd", "agents", "--data.dir="+serverState, "--server.url="+serverURL, "--output=json", "list")
		if err != nil {
			return fmt.Errorf("agents list: %w: %s", err, out)
		}
		var agents []struct {
			State string `json:"state"`
		}
		if err := json.Unmarshal([]byte(out), &agents); err != nil {
			return fmt.Errorf("agents list: %w: %s", err, out)
		}
		if len(agents) != 1 || agents[0].State != "healthy" {
			return fmt.Errorf("want one healthy agent, have %s", out)
		}
		// The server has the registration before the agent has written
		// the certificate it got back.
		_, err = os.Stat(filepath.Join(agentState, "cert.pem"))
		return err
	})
	for _, f := range []struct {
		name    string
		private bool
	}{{"key.pem", true}, {"cert.pem", false}} {
		fi, err := os.Stat(filepath.Join(agentState, f.name))
		if err != nil {
			t.Fatal(err)
		}
		if u := userName(t, fi.Sys().(*syscall.Stat_t).Uid); u != "baremetal_sd-agent" {
			t.Errorf("%s: owner %s, want baremetal_sd-agent", f.name, u)
		}
		if f.private && fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v, want it private to its owner", f.name, fi.Mode())
		}
	}
	stopAgent()
	stopServer()

	// Enrolled, the agent starts on its certificate alone: an operator may
	// delete the token.
	tokenFile := confDir + "/enroll.token"
	if err := os.Rename(tokenFile, tokenFile+".away"); err != nil {
		t.Fatal(err)
	}
	starts := unitConditions(t, agentUnit)
	if err := os.Rename(tokenFile+".away", tokenFile); err != nil {
		t.Fatal(err)
	}
	if !starts {
		t.Errorf("%s would not start on the certificate of its enrollment without the token", agentUnit)
	}
}

// unitConditions evaluates the Condition settings of a unit file with
// `systemd-analyze condition`, as systemd does before starting the unit,
// and reports whether they hold.
func unitConditions(t *testing.T, unit string) bool {
	t.Helper()
	var conds []string
	for _, line := range strings.Split(string(readFile(t, unit)), "\n") {
		if strings.HasPrefix(line, "Condition") {
			conds = append(conds, line)
		}
	}
	if len(conds) == 0 {
		t.Fatalf("%s has no conditions", unit)
	}
	out, err := exec.Command("systemd-analyze", append([]string{"condition"}, conds...)...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true
	case errors.As(err, &exit) && exit.ExitCode() == 1 && bytes.Contains(out, []byte("Conditions failed")):
		return false
	default:
		t.Fatalf("systemd-analyze condition: %v\n%s", err, out)
		return false
	}
}

// testUpgrade installs the package over itself, which runs the upgrade
// path of every maintainer script: the keys, the registry and an edited
// conffile stay as they were, the agent stays enabled.
func testUpgrade(t *testing.T) {
	kept := []string{
		filepath.Join(serverState, "ca.key"),
		filepath.Join(serverState, "token.key"),
		filepath.Join(agentState, "key.pem"),
		filepath.Join(agentState, "cert.pem"),
	}
	before := hashFiles(t, kept)
	relay := confDir + "/relay.yml"
	edited := append(readFile(t, relay), []byte("# edited by the operator\n")...)
	if err := os.WriteFile(relay, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	srvUID := lookupUID(t, "baremetal_sd")
	// An administrator's statoverride of a state directory survives.
	if out, err := exec.Command("dpkg-statoverride", "--update", "--add", "baremetal_sd-agent", "baremetal_sd-agent", "0750", agentState).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-statoverride: %v\n%s", err, out)
	}
	defer func() {
		if out, err := exec.Command("dpkg-statoverride", "--remove", agentState).CombinedOutput(); err != nil {
			t.Errorf("dpkg-statoverride --remove: %v\n%s", err, out)
		}
		if err := os.Chmod(agentState, 0o700); err != nil {
			t.Error(err)
		}
	}()

	if out, err := dpkg(t, "--install", deb); err != nil {
		t.Fatalf("dpkg --install over itself: %v\n%s", err, out)
	}
	if status := packageStatus(t); status != "install ok installed" {
		t.Fatalf("package status %q after upgrade", status)
	}
	if after := hashFiles(t, kept); !equalMaps(before, after) {
		t.Errorf("state changed by the upgrade: before %v, after %v", before, after)
	}
	if !bytes.Equal(readFile(t, relay), edited) {
		t.Errorf("the operator's edit of %s is gone", relay)
	}
	if uid := lookupUID(t, "baremetal_sd"); uid != srvUID {
		t.Errorf("baremetal_sd's uid changed from %s to %s", srvUID, uid)
	}
	if _, err := os.Lstat(agentWants); err != nil {
		t.Errorf("the agent is no longer enabled: %v", err)
	}
	if fi, err := os.Stat(agentState); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o750 {
		t.Errorf("the upgrade overrode the statoverride of %s: mode %v, want 0750", agentState, fi.Mode())
	}
}

// testRemove removes the package: the program goes, state and
// configuration stay for a later reinstall.
func testRemove(t *testing.T) {
	if out, err := dpkg(t, "--remove", pkgName); err != nil {
		t.Fatalf("dpkg --remove: %v\n%s", err, out)
	}
	if status := packageStatus(t); status != "deinstall ok config-files" {
		t.Fatalf("package status %q after remove", status)
	}
	for _, gone := range []string{"/usr/bin/baremetal_sd", serverUnit, agentUnit} {
		if _, err := os.Lstat(gone); err == nil {
			t.Errorf("%s is still there after remove", gone)
		}
	}
	for _, kept := range []string{
		filepath.Join(serverState, "ca.key"),
		filepath.Join(agentState, "cert.pem"),
		confDir + "/relay.yml",
		confDir + "/enroll.token",
		"/etc/default/baremetal_sd-agent",
	} {
		if _, err := os.Lstat(kept); err != nil {
			t.Errorf("remove must keep %s: %v", kept, err)
		}
	}
}

// testPurge purges the package: state, configuration and the unit
// symlinks go; the users stay, as with Debian's own packages.
func testPurge(t *testing.T) {
	if out, err := dpkg(t, "--purge", pkgName); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, out)
	}
	if status := packageStatus(t); status != "" {
		t.Fatalf("package status %q after purge", status)
	}
	for _, gone := range []string{serverState, agentState, confDir, "/etc/default/baremetal_sd-server", "/etc/default/baremetal_sd-agent", agentWants} {
		if _, err := os.Lstat(gone); err == nil {
			t.Errorf("%s is still there after purge", gone)
		}
	}
	for _, u := range []string{"baremetal_sd", "baremetal_sd-agent"} {
		if _, err := user.Lookup(u); err != nil {
			t.Errorf("purge removed user %s: %v", u, err)
		}
	}
}

// lockPackageTests keeps two runs of these tests on one machine (two
// worktrees, say) from installing the one package at the same time.
func lockPackageTests(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile("/run/lock/baremetal_sd-package-test.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	waitFor(t, lockTimeout, func() error {
		return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	})
}

// dpkg runs dpkg non-interactively; an edited conffile is kept.
func dpkg(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dpkgTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "dpkg", append([]string{"--force-confdef", "--force-confold"}, args...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// packageStatus is dpkg's status of the package, "" when dpkg knows
// nothing of it.
func packageStatus(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("dpkg-query", "--showformat=${Status}", "--show", pkgName).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(out)); s != "unknown ok not-installed" {
		return s
	}
	return ""
}

// unitCommand returns the User= and the command line of an installed
// unit's ExecStart, with $ARGS from its environment file read as systemd
// reads it (split at white space), and the value of each flag in override
// replaced. An override of a flag the command line lacks fails the test:
// the defaults changed and the test must follow.
func unitCommand(t *testing.T, unit, envFile string, override map[string]string) (string, []string) {
	t.Helper()
	var usr, execStart string
	for _, line := range strings.Split(string(readFile(t, unit)), "\n") {
		if v, ok := strings.CutPrefix(line, "User="); ok {
			usr = v
		}
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execStart = v
		}
	}
	if usr == "" || execStart == "" {
		t.Fatalf("%s: no User= or ExecStart=", unit)
	}
	out, err := exec.Command("sh", "-c", `. "$1" && printf %s "$ARGS"`, "sh", envFile).Output()
	if err != nil {
		t.Fatalf("read ARGS from %s: %v", envFile, err)
	}
	var args []string
	for _, a := range strings.Fields(execStart) {
		if a == "$ARGS" {
			args = append(args, strings.Fields(string(out))...)
			continue
		}
		args = append(args, a)
	}
	seen := make(map[string]bool)
	for i, a := range args {
		name, _, _ := strings.Cut(a, "=")
		if v, ok := override[name]; ok {
			args[i] = name + "=" + v
			seen[name] = true
		}
	}
	for name := range override {
		if !seen[name] {
			t.Fatalf("%s with %s sets no %s", unit, envFile, name)
		}
	}
	return usr, args
}

// start runs a daemon as a user and returns a function that stops it
// with SIGTERM, as systemd does, and waits for it.
func start(t *testing.T, usr string, args []string) (stop func()) {
	t.Helper()
	var log bytes.Buffer
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: credential(t, usr)}
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", args[0], err)
			}
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			err := <-done
			t.Errorf("%s did not stop within %s of SIGTERM (killed: %v)", args[0], stopTimeout, err)
		}
		if t.Failed() {
			t.Logf("%s as %s:\n%s", strings.Join(args, " "), usr, log.String())
		}
	}
	t.Cleanup(stop)
	return stop
}

// runAs runs a command as a user and returns its standard output, or
// everything it printed when it fails.
func runAs(t *testing.T, usr string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: credential(t, usr)}
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return strings.TrimSpace(stdout.String()), nil
}

func credential(t *testing.T, name string) *syscall.Credential {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}}
}

func httpsClient(caFile string) (*http.Client, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}, nil
}

// waitFor is poll.Until, under the name the end-to-end tests use.
func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	poll.Until(t, timeout, cond)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeFile writes a file owned by root and the given group.
func writeFile(t *testing.T, path string, data []byte, mode fs.FileMode, group string) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	if err := os.Chown(path, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func install(t *testing.T, src, dst string, mode fs.FileMode, group string) {
	t.Helper()
	writeFile(t, dst, readFile(t, src), mode, group)
}

func hashFiles(t *testing.T, paths []string) map[string]string {
	t.Helper()
	m := make(map[string]string)
	for _, p := range paths {
		m[p] = fmt.Sprintf("%x", sha256.Sum256(readFile(t, p)))
	}
	return m
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func lookupUID(t *testing.T, name string) string {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return u.Uid
}

func userName(t *testing.T, uid uint32) string {
	t.Helper()
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func groupName(t *testing.T, gid uint32) string {
	t.Helper()
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10))
	if err != nil {
		t.Fatal(err)
	}
	return g.Name
}
