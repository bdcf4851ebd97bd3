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
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// Files in the state directory.
const (
	KeyFile       = "key.pem"
	CertFile      = "cert.pem"
	CAFile        = "ca.crt"
	WebConfigFile = "web-config.yml"
	StateFile     = "agent.json"
)

// Bounds on what the agent reads from disk.
const (
	maxKeyFile   = 64 << 10
	maxCertFile  = 1 << 20
	maxStateFile = 64 << 10
	maxTokenFile = 16 << 10
	maxChainLen  = 8
)

// errTooLarge is returned by readBounded for files above the limit.
var errTooLarge = errors.New("file too large")

// errKeyPermissions is returned for a private key file that others than
// its owner may read or write.
var errKeyPermissions = errors.New("private key is accessible to others than its owner")

// readBounded reads a whole file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAllBounded(f, path, limit)
}

// readPrivate is readBounded for a private key: it refuses a file whose
// mode grants its group or others any access. The mode is taken from the
// open file, so a file swapped in between the check and the read cannot
// pass.
//
// The agent refuses rather than tightening the mode and warning, as OpenSSH
// does with identity files: a key others could read may have been copied
// already, and only the operator can tell whether tightening the mode is
// enough or the key must be replaced. The agent itself only ever writes the
// key 0600, so a looser mode means someone changed it.
func readPrivate(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o: %w; if nobody else can have read it, run chmod 600 on it, "+
			"otherwise remove it to generate a new key (the agent then needs a new enrollment token)", path, perm, errKeyPermissions)
	}
	return readAllBounded(f, path, limit)
}

func readAllBounded(f *os.File, path string, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: %w (more than %d bytes)", path, errTooLarge, limit)
	}
	return data, nil
}

// loadOrCreateKey returns the agent's private key, generating and writing it
// on first start. created says whether it is new.
func loadOrCreateKey(path string) (key *ecdsa.PrivateKey, created bool, err error) {
	data, err := readPrivate(path, maxKeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, false, fmt.Errorf("generate key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, false, fmt.Errorf("encode key: %w", err)
		}
		if err := fileutil.WriteAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, false, fmt.Errorf("write key: %w", err)
		}
		return key, true, nil
	}
	if errors.Is(err, errKeyPermissions) {
		return nil, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("read key: %w", err)
	}
	key, err = parseKey(data)
	if err != nil {
		return nil, false, fmt.Errorf("key %s: %w (remove it to generate a new key; the agent then needs a new enrollment token)", path, err)
	}
	return key, false, nil
}

// parseKey accepts a PKCS#8 or SEC 1 ECDSA key in PEM.
func parseKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	switch block.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS#8 key: %w", err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("unsupported key type %T, want ECDSA", k)
		}
		return ek, nil
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse EC key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
}

// parseChain parses a PEM certificate chain: the agent's certificate first.
func parseChain(data []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for len(chain) <= maxChainLen {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	if len(chain) > maxChainLen {
		return nil, fmt.Errorf("more than %d certificates in the chain", maxChainLen)
	}
	return chain, nil
}

// keyPair builds a tls.Certificate from a chain and the agent's key, checking
// that the leaf certifies that key.
func keyPair(chain []*x509.Certificate, key *ecdsa.PrivateKey) (*tls.Certificate, error) {
	pub, ok := chain[0].PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("certificate does not match the agent's key")
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, cert := range chain {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c, nil
}

// loadCertificate reads the stored certificate; nil without error when there
// is none yet.
func loadCertificate(path string, key *ecdsa.PrivateKey) (*tls.Certificate, []byte, error) {
	data, err := readBounded(path, maxCertFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	chain, err := parseChain(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	c, err := keyPair(chain, key)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, data, nil
}

// newCSR makes a certificate request signed by the agent's key. The server
// decides the certificate's names from the registration; the request only
// proves possession of the key.
func newCSR(key *ecdsa.PrivateKey, hostname string) (string, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: hostname},
	}, key)
	if err != nil {
		return "", fmt.Errorf("create certificate request: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// persistedState is agent.json: what the agent remembers between runs that
// the certificate does not tell.
type persistedState struct {
	AgentID string `json:"agent_id"`
	// Registration is a digest of the last registered hostname, address,
	// port, labels and exporters; a change means registering again.
	Registration string `json:"registration"`
	// CertSerial is the certificate RenewAfter belongs to.
	CertSerial string    `json:"cert_serial"`
	RenewAfter time.Time `json:"renew_after"`
	// TTLSeconds and HeartbeatIntervalSeconds are what the servers said
	// last, in any reply: a restarted agent bounds its first requests by
	// them (see client.Client.Observe) and heartbeats at that interval.
	// Zero when no server has said them.
	TTLSeconds               int       `json:"ttl_seconds,omitempty"`
	HeartbeatIntervalSeconds int       `json:"heartbeat_interval_seconds"`
	UpdatedAt                time.Time `json:"updated_at"`
}

// loadPersisted reads agent.json: the zero state when there is none, an
// error and the zero state when it cannot be read or is garbled.
func loadPersisted(path string) (persistedState, error) {
	var p persistedState
	data, err := readBounded(path, maxStateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return persistedState{}, fmt.Errorf("%s: %w", path, err)
	}
	// The agent never writes a negative value: the file is not its own.
	if p.TTLSeconds < 0 || p.HeartbeatIntervalSeconds < 0 {
		return persistedState{}, fmt.Errorf("%s: negative ttl_seconds %d or heartbeat_interval_seconds %d", path, p.TTLSeconds, p.HeartbeatIntervalSeconds)
	}
	return p, nil
}

// savePersisted replaces agent.json atomically, 0600 as the other state
// files that only the agent reads.
func savePersisted(path string, p persistedState) error {
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	return fileutil.WriteAtomic(path, append(data, '\n'), 0o600)
}

// registrationDigest identifies what a registration tells the server, so
// that a restart with the same flags and relay config does not re-register.
func registrationDigest(req *protocol.RegisterRequest) string {
	data, _ := json.Marshal(struct {
		Hostname  string              `json:"hostname"`
		Address   string              `json:"address"`
		Port      int                 `json:"port"`
		Labels    map[string]string   `json:"labels"`
		Exporters []protocol.Exporter `json:"exporters"`
	}{req.Hostname, req.Address, req.Port, req.Labels, req.Exporters})
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// webConfig is the exporter-toolkit web config the agent serves with when
// the operator gives none: its own certificate, and only clients with a
// certificate from the CA, which is what Prometheus gets from `cert issue`.
const webConfig = `# Written by baremetal_sd agent because no --web.config.file was given.
# Pass your own web config to change it; this file is rewritten on start.
tls_server_config:
  cert_file: ` + CertFile + `
  key_file: ` + KeyFile + `
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ` + CAFile + `
`

// writeWebConfig writes the default web config into dir, unless it is
// already there, and returns its path.
func writeWebConfig(dir string) (string, error) {
	path := filepath.Join(dir, WebConfigFile)
	if old, err := readBounded(path, maxStateFile); err == nil && string(old) == webConfig {
		return path, nil
	}
	if err := fileutil.WriteAtomic(path, []byte(webConfig), 0o600); err != nil {
		return "", fmt.Errorf("write web config: %w", err)
	}
	return path, nil
}

// usesStateCertificates reports whether an operator's web config names the
// agent's certificate or CA in the state directory: files that exist only
// once the agent has enrolled. An operator who wants basic auth or other
// TLS settings with the agent's own certificate writes such a file; serving
// it before the first enrollment would fail to load the certificate and
// stop the agent, again on every restart. Loading the file here also
// refuses a broken web config at start.
func usesStateCertificates(webConfigFile, stateDir string) (bool, error) {
	wc, err := web.LoadConfig(webConfigFile)
	if err != nil {
		return false, fmt.Errorf("--web.config.file: %w", err)
	}
	own := map[string]bool{}
	for _, name := range []string{CertFile, CAFile} {
		p, err := filepath.Abs(filepath.Join(stateDir, name))
		if err != nil {
			return false, fmt.Errorf("state directory: %w", err)
		}
		own[p] = true
	}
	for _, p := range []string{wc.TLSConfig.TLSCertPath, wc.TLSConfig.ClientCAs} {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return false, fmt.Errorf("--web.config.file: %w", err)
		}
		if own[abs] {
			return true, nil
		}
	}
	return false, nil
}

// readToken reads the enrollment token; "" when the file is missing or
// empty.
func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	data, err := readBounded(path, maxTokenFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// tokenDigest identifies a token without keeping it around.
func tokenDigest(tok string) [32]byte { return sha256.Sum256([]byte(tok)) }
