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

package bench

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
)

// saveIdentities writes enrolled agents to path (0600: it holds their
// keys), one per line: agent id, then the key and each certificate of the
// chain as base64 DER, tab separated. `bench heartbeat --agents.file` reads
// it back, so that heartbeats come from the agents `bench register`
// enrolled, each with its own certificate.
func saveIdentities(path string, ids []*agentIdentity) error {
	return fileutil.WriteAtomicFunc(path, 0o600, func(w0 io.Writer) error {
		w := bufio.NewWriterSize(w0, 1<<20)
		for _, id := range ids {
			if id.cert == nil {
				continue
			}
			der, err := x509.MarshalECPrivateKey(id.key)
			if err != nil {
				return fmt.Errorf("encode key of %s: %w", id.id, err)
			}
			fields := []string{id.id, base64.StdEncoding.EncodeToString(der)}
			for _, c := range id.cert.Certificate {
				fields = append(fields, base64.StdEncoding.EncodeToString(c))
			}
			if _, err := w.WriteString(strings.Join(fields, "\t") + "\n"); err != nil {
				return err
			}
		}
		return w.Flush()
	})
}

// loadIdentities reads the agents saveIdentities wrote into each path.
func loadIdentities(paths []string) ([]*agentIdentity, error) {
	var out []*agentIdentity
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read agents: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		line := 0
		for sc.Scan() {
			line++
			id, err := parseIdentity(sc.Bytes())
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("%s:%d: %w", path, line, err)
			}
			out = append(out, id)
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no agents in %s", strings.Join(paths, ", "))
	}
	return out, nil
}

func parseIdentity(line []byte) (*agentIdentity, error) {
	fields := bytes.Split(line, []byte("\t"))
	if len(fields) < 3 {
		return nil, fmt.Errorf("want an id, a key and a certificate, got %d fields", len(fields))
	}
	decode := func(b []byte) ([]byte, error) { return base64.StdEncoding.AppendDecode(nil, b) }
	der, err := decode(fields[1])
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	key, err := x509.ParseECPrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key}
	for _, f := range fields[2:] {
		c, err := decode(f)
		if err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
		cert.Certificate = append(cert.Certificate, c)
	}
	if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return &agentIdentity{id: string(fields[0]), key: key, cert: cert}, nil
}
