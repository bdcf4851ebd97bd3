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
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/baremetal-sd/baremetal_sd/web"
)

// checkWebConfig checks the operator's web config and the TLS files it
// names before the agent writes its state or enrolls: a file it cannot
// serve with must not leave a registered target that refuses every scrape.
// It reports whether the file names the agent's own certificate or CA
// (see usesStateCertificates); those, and the rest of the state
// directory, are checked when the agent has enrolled.
func checkWebConfig(path, stateDir string) (bool, error) {
	waitForCert, err := usesStateCertificates(path, stateDir)
	if err != nil {
		return false, err
	}
	wc, err := web.LoadConfig(path)
	if err != nil {
		return false, fmt.Errorf("--web.config.file: %w", err)
	}
	state, err := filepath.Abs(stateDir)
	if err != nil {
		return false, fmt.Errorf("--agent.state-dir: %w", err)
	}
	inState := func(file string) bool {
		abs, err := filepath.Abs(file)
		return err == nil && strings.HasPrefix(abs, state+string(filepath.Separator))
	}
	if err := web.CheckTLSFiles(path, wc.TLSConfig, inState); err != nil {
		return false, fmt.Errorf("--web.config.file: %w", err)
	}
	return waitForCert, nil
}

// checkEnrollment refuses an agent that could never enroll, before it
// writes its state: one with neither a certificate in its state directory
// nor a token file, or with a token file it cannot read. A token file that
// does not exist yet is fine: the agent reads it whenever it needs to
// enroll, so an operator can drop the token in later.
func checkEnrollment(cfg Config) error {
	if cfg.TokenFile == "" {
		if _, err := os.Stat(filepath.Join(cfg.StateDir, CertFile)); err != nil {
			return fmt.Errorf("no certificate in --agent.state-dir %s and no --discovery.token-file to enroll with: create a token on the server (baremetal_sd token create --scope=enroll) and pass its file", cfg.StateDir)
		}
		return nil
	}
	f, err := os.Open(cfg.TokenFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--discovery.token-file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("--discovery.token-file: %s is not a regular file", cfg.TokenFile)
	}
	return nil
}
