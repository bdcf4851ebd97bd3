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

package etcdtest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// TLSFiles are PEM files of one TLS party: the CA that verifies the other
// side, and this side's certificate and key.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// Config loads the files into a client TLS configuration.
func (f *TLSFiles) Config(t testing.TB) *tls.Config {
	t.Helper()
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", f.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// makeCerts writes a CA, a serving certificate for 127.0.0.1 and a client
// certificate into dir, and returns the client's and the server's files.
// The client's CA file is a separate copy, so a test can swap it.
func makeCerts(t testing.TB, dir string) (client *TLSFiles, server TLSFiles) {
	t.Helper()
	ca := testca.New(t, "baremetal_sd etcd test CA")
	// A day, as long as the CA: a cluster may serve a long run.
	notAfter := time.Now().Add(24 * time.Hour)
	server.CAFile = writeFile(t, dir, "etcd-ca.crt", ca.PEM())
	server.CertFile, server.KeyFile = ca.Issue(t, testca.Leaf{
		CommonName: "etcd", DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		Usage: testca.ServerAuth | testca.ClientAuth, NotAfter: notAfter,
	}).WriteFiles(t, dir, "etcd-server")
	client = &TLSFiles{CAFile: writeFile(t, dir, "etcd-client-ca.crt", ca.PEM())}
	client.CertFile, client.KeyFile = ca.Issue(t, testca.Leaf{
		CommonName: "baremetal_sd", Usage: testca.ClientAuth, NotAfter: notAfter,
	}).WriteFiles(t, dir, "etcd-client")
	return client, server
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
