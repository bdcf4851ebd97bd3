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
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// trustHintInterval bounds how often the agent repeats what to fix when it
// cannot verify the discovery server: often enough to be in any recent
// log, not once per retry.
const trustHintInterval = 5 * time.Minute

// trustHint says what to fix when err is the discovery server's certificate
// failing verification, and "" for any other error. The raw x509 error
// names neither the file nor where the right one comes from.
func trustHint(err error, caFile string) string {
	var verr *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var host x509.HostnameError
	switch {
	case errors.As(err, &host):
		return "the discovery server's certificate does not name the host in --discovery.url: use a name it was issued for, or restart the server with --tls.server-name for this one"
	case errors.As(err, &unknown), errors.As(err, &verr) && !errors.As(err, &invalid):
		if caFile == "" {
			return "the discovery server's certificate is not signed by a CA in the system roots: pass the server's CA with --discovery.ca-file (the server's data directory has it as ca.crt, and https://SERVER:9955/ca.crt serves it)"
		}
		return fmt.Sprintf("the discovery server's certificate is not signed by the CA in --discovery.ca-file %s: replace that file with the server's ca.crt (from its data directory, or from https://SERVER:9955/ca.crt), not agent-ca.crt or client-ca.crt", caFile)
	case errors.As(err, &invalid):
		return "the discovery server's certificate is not valid now: check this host's clock and the server's certificate expiry"
	}
	return ""
}

// every allows an action at most once per interval.
type every struct {
	interval time.Duration
	last     time.Time
}

// allow reports whether the action may happen at now, and if so records it.
func (e *every) allow(now time.Time) bool {
	if !e.last.IsZero() && now.Sub(e.last) < e.interval {
		return false
	}
	e.last = now
	return true
}

// explainTrust logs what to fix when err is the discovery server failing
// verification, at most once per trustHintInterval: the state change is
// logged once, but a wrong CA file never fixes itself.
func (l *lifecycle) explainTrust(err error) {
	hint := trustHint(err, l.cfg.CAFile)
	if hint == "" || !l.trustHints.allow(time.Now()) {
		return
	}
	l.logger.Error("Cannot verify the discovery server", "fix", hint, "err", err)
}
