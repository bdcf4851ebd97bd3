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
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestTrustHint_SaysWhatToFix(t *testing.T) {
	wrap := func(err error) error {
		return fmt.Errorf("register: %w", &url.Error{Op: "Post", URL: "https://sd:9955", Err: err})
	}
	for _, tc := range []struct {
		name, caFile string
		err          error
		want         string
	}{
		{"wrong CA file", "/etc/ca.crt", wrap(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), "not signed by the CA in --discovery.ca-file /etc/ca.crt"},
		{"system roots", "", wrap(x509.UnknownAuthorityError{}), "pass the server's CA with --discovery.ca-file"},
		{"wrong name", "/etc/ca.crt", wrap(&tls.CertificateVerificationError{Err: x509.HostnameError{Host: "sd"}}), "--tls.server-name"},
		{"expired", "/etc/ca.crt", wrap(&tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired}}), "clock"},
		{"connection refused", "/etc/ca.crt", wrap(errors.New("connect: connection refused")), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := trustHint(tc.err, tc.caFile)
			if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
				t.Errorf("trustHint = %q, want one containing %q", got, tc.want)
			}
		})
	}
}

func TestEvery_BoundsRate(t *testing.T) {
	e := every{interval: 5 * time.Minute}
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		at   time.Duration
		want bool
	}{{0, true}, {time.Second, false}, {4 * time.Minute, false}, {5 * time.Minute, true}, {6 * time.Minute, false}, {10 * time.Minute, true}} {
		if got := e.allow(t0.Add(tc.at)); got != tc.want {
			t.Errorf("allow at +%s = %v, want %v", tc.at, got, tc.want)
		}
	}
}
