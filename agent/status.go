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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
)

// StatusFile is the agent's registration state as it last changed. The
// agent serves nothing before it has a certificate, so its metrics cannot
// say why it has none; `baremetal_sd agent-status` reads this file instead,
// on the host, without credentials. A file, not a self-signed listener: it
// needs no port, no trust decision, and it also answers when the agent is
// not running.
const StatusFile = "status.json"

// Status is the content of StatusFile.
type Status struct {
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Error  string    `json:"error,omitempty"`
	Server string    `json:"server,omitempty"`
	Since  time.Time `json:"since"`
	PID    int       `json:"pid"`
}

// writeStatus records a state change in StatusFile. A failure is logged
// once: the file is a diagnosis aid, the agent works without it.
func (l *lifecycle) writeStatus(state, reason string, err error) {
	s := Status{State: state, Reason: reason, Server: l.server, Since: time.Now().UTC(), PID: os.Getpid()}
	if err != nil {
		s.Error = err.Error()
	}
	data, _ := json.MarshalIndent(s, "", "  ") // plain strings and a time: cannot fail
	if werr := fileutil.WriteAtomic(l.path(StatusFile), append(data, '\n'), 0o600); werr != nil && !l.statusWriteFailed {
		l.statusWriteFailed = true
		l.logger.Warn("Could not write the status file", "path", l.path(StatusFile), "err", werr)
	}
}

// PrintStatus writes a report of the agent in stateDir to w: its last
// registration state with the reason, its id and its certificate. It
// reports whether the agent is registered.
func PrintStatus(stateDir string, w io.Writer) (bool, error) {
	var s Status
	data, err := readBounded(filepath.Join(stateDir, StatusFile), maxStateFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("no %s in %s: the agent has not run with this --agent.state-dir", StatusFile, stateDir)
	case err != nil:
		return false, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return false, fmt.Errorf("%s: %w", filepath.Join(stateDir, StatusFile), err)
	}
	p, _ := loadPersisted(filepath.Join(stateDir, StateFile))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "state:\t%s\n", s.State)
	fmt.Fprintf(tw, "since:\t%s (%s ago, written by pid %d)\n", s.Since.Format(time.RFC3339), time.Since(s.Since).Round(time.Second), s.PID)
	if s.Reason != "" {
		fmt.Fprintf(tw, "reason:\t%s\n", s.Reason)
	}
	if s.Error != "" {
		fmt.Fprintf(tw, "error:\t%s\n", s.Error)
	}
	if s.Server != "" {
		fmt.Fprintf(tw, "server:\t%s\n", s.Server)
	}
	if p.AgentID != "" {
		fmt.Fprintf(tw, "agent id:\t%s\n", p.AgentID)
	}
	fmt.Fprintf(tw, "certificate:\t%s\n", describeCertificate(filepath.Join(stateDir, CertFile)))
	if err := tw.Flush(); err != nil {
		return false, err
	}
	return s.State == stateRegistered, nil
}

// describeCertificate says whether the certificate file exists and until
// when it is valid, without the key: the report needs no secret.
func describeCertificate(path string) string {
	data, err := readBounded(path, maxCertFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "none yet"
	}
	if err != nil {
		return err.Error()
	}
	chain, err := parseChain(data)
	if err != nil || len(chain) == 0 {
		return fmt.Sprintf("unreadable (%v)", err)
	}
	leaf := chain[0]
	if time.Now().After(leaf.NotAfter) {
		return "expired " + leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	return "valid until " + leaf.NotAfter.UTC().Format(time.RFC3339)
}
