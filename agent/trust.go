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
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// replyCAs are the CAs a register or renew reply tells the agent about,
// after checking them against the pinned CA.
type replyCAs struct {
	// agent verifies the certificate in the reply.
	agent []*x509.Certificate
	// clientPEM is what the relay accepts scrapers' certificates from,
	// written to the state directory's ca.crt.
	clientPEM []byte
}

// checkReplyCAs accepts the CAs of a reply only when the CA the agent pins
// (--discovery.ca-file) vouches for them: an issuing CA must be signed by a
// pinned certificate and carry its issuer role; the single CA of a 0.1.0
// server must be a pinned certificate itself. A reply never changes which
// CA verifies the server. Without a pinned CA the server was verified by
// the system roots, and its reply is taken as it is.
func checkReplyCAs(resp *protocol.CertificateResponse, pinned []*x509.Certificate) (*replyCAs, error) {
	if resp.AgentCACertificate == "" && resp.ClientCACertificate == "" {
		return legacyReplyCAs(resp, pinned)
	}
	agentCA, err := issuerOf(resp.AgentCACertificate, pinned, ca.IssuerAgent)
	if err != nil {
		return nil, err
	}
	clientCA, err := issuerOf(resp.ClientCACertificate, pinned, ca.IssuerClient)
	if err != nil {
		return nil, err
	}
	return &replyCAs{
		agent:     []*x509.Certificate{agentCA},
		clientPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: clientCA.Raw}),
	}, nil
}

func issuerOf(pemData string, pinned []*x509.Certificate, role ca.IssuerRole) (*x509.Certificate, error) {
	certs, err := parseChain([]byte(pemData))
	if err != nil {
		return nil, fmt.Errorf("%s certificate: %w", role, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s certificate: %d certificates, want 1", role, len(certs))
	}
	if pinned != nil {
		if err := ca.VerifyIssuer(certs[0], pinned, role); err != nil {
			return nil, fmt.Errorf("refusing the reply's CA: %w", err)
		}
	}
	return certs[0], nil
}

// legacyReplyCAs takes the ca_certificate of a 0.1.0 server, which signed
// everything with the one CA the agent pins.
func legacyReplyCAs(resp *protocol.CertificateResponse, pinned []*x509.Certificate) (*replyCAs, error) {
	if resp.CACertificate == "" {
		return nil, errors.New("no CA certificate in the response")
	}
	certs, err := parseChain([]byte(resp.CACertificate))
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if pinned != nil {
		for _, c := range certs {
			if !slices.ContainsFunc(pinned, c.Equal) {
				return nil, fmt.Errorf("refusing the reply's CA %q: it is not the CA in --discovery.ca-file", c.Subject.CommonName)
			}
		}
	}
	return &replyCAs{agent: certs, clientPEM: []byte(resp.CACertificate)}, nil
}
