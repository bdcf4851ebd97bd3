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

package ca

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
)

// Scope says what a token allows.
type Scope string

// Token scopes. An admin token may also read http_sd.
const (
	ScopeEnroll    Scope = "enroll"
	ScopeDiscovery Scope = "discovery"
	ScopeAdmin     Scope = "admin"
)

// TokenKeyFile holds the token signing secret in the data directory.
const TokenKeyFile = "token.key"

const (
	// tokenIssuer and tokenAudience are pinned: a token minted for another
	// system with the same secret is refused.
	tokenIssuer   = "baremetal_sd"
	tokenAudience = "baremetal_sd"
	tokenKeyBytes = 32
	// maxTokenSize bounds what is parsed at all.
	maxTokenSize = 8 << 10
)

// Claims are the claims of a baremetal_sd token.
type Claims struct {
	jwt.RegisteredClaims
	Scope Scope `json:"scope"`
	// AgentID fixes the id of the agent an enrollment token enrolls.
	AgentID string `json:"agent_id,omitempty"`
	// Labels are label values the enrolling agent must carry.
	Labels map[string]string `json:"labels,omitempty"`
	// SingleUse tokens enroll one agent; the server records their jti.
	SingleUse bool `json:"single_use,omitempty"`
}

// LoadOrCreateTokenKey loads dir/token.key or creates it with 256 random
// bits (mode 0600).
func LoadOrCreateTokenKey(dir string) ([]byte, bool, error) {
	path := filepath.Join(dir, TokenKeyFile)
	ok, err := exists(path)
	if err != nil {
		return nil, false, err
	}
	if ok {
		key, err := LoadTokenKey(dir)
		return key, false, err
	}
	key := make([]byte, tokenKeyBytes)
	_, _ = rand.Read(key) // crypto/rand.Read never fails
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("create data directory: %w", err)
	}
	if err := fileutil.WriteAtomic(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, false, fmt.Errorf("write token key: %w", err)
	}
	return key, true, nil
}

// LoadTokenKey loads dir/token.key.
func LoadTokenKey(dir string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, TokenKeyFile))
	if err != nil {
		return nil, fmt.Errorf("read token key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, errors.New("token key is not base64")
	}
	if len(key) < tokenKeyBytes {
		return nil, fmt.Errorf("token key has %d bytes, want at least %d", len(key), tokenKeyBytes)
	}
	return key, nil
}

// Tokens creates and verifies tokens with one secret.
type Tokens struct {
	key []byte
}

// NewTokens returns a token signer and verifier for key.
func NewTokens(key []byte) *Tokens { return &Tokens{key: key} }

// TokenSpec describes a token to create.
type TokenSpec struct {
	Scope     Scope
	TTL       time.Duration
	AgentID   string
	Labels    map[string]string
	SingleUse bool
}

// Create signs a token valid from now for spec.TTL.
func (t *Tokens) Create(spec TokenSpec, now time.Time) (string, error) {
	if spec.TTL <= 0 {
		return "", errors.New("token TTL must be positive")
	}
	claims := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    tokenIssuer,
			Audience:  jwt.ClaimStrings{tokenAudience},
			ExpiresAt: jwt.NewNumericDate(now.Add(spec.TTL)),
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now.Add(-clockSkew)),
			ID:        strings.ToLower(rand.Text()),
		},
		Scope:     spec.Scope,
		AgentID:   spec.AgentID,
		Labels:    spec.Labels,
		SingleUse: spec.SingleUse,
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return signed, nil
}

// TokenError is a refused token. Reason is a short word for metrics; Error
// is safe to return to a client and never contains the token.
type TokenError struct {
	Reason string
	Err    error
}

func (e *TokenError) Error() string { return e.Err.Error() }

func (e *TokenError) Unwrap() error { return e.Err }

func tokenError(reason, msg string) *TokenError {
	return &TokenError{Reason: reason, Err: errors.New(msg)}
}

// Verify checks a token: HS256 only, our issuer and audience, an expiry, a
// jti, and the wanted scope (admin also satisfies discovery).
func (t *Tokens) Verify(raw string, want Scope, now time.Time) (*Claims, error) {
	if raw == "" {
		return nil, tokenError("missing", "no token")
	}
	if len(raw) > maxTokenSize {
		return nil, tokenError("malformed", "token too large")
	}
	var claims Claims
	_, err := jwt.ParseWithClaims(raw, &claims, func(tok *jwt.Token) (any, error) {
		// WithValidMethods already refuses other algorithms; this guards
		// against a future change of that option.
		if tok.Method != jwt.SigningMethodHS256 {
			return nil, errors.New("unexpected signing method")
		}
		return t.key, nil
	},
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(tokenIssuer),
		jwt.WithAudience(tokenAudience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(func() time.Time { return now }),
	)
	if err != nil {
		return nil, classify(raw, err)
	}
	if claims.ID == "" {
		return nil, tokenError("claims", "token has no jti")
	}
	if claims.Scope != want && (want != ScopeDiscovery || claims.Scope != ScopeAdmin) {
		return nil, tokenError("scope", fmt.Sprintf("token scope %q does not allow %s", truncateScope(claims.Scope), want))
	}
	return &claims, nil
}

// classify maps a jwt error to a reason. An algorithm other than HS256 is
// reported as such even though the library reports it as an unverifiable or
// invalid signature.
func classify(raw string, err error) *TokenError {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return tokenError("malformed", "token is malformed")
	case errors.Is(err, jwt.ErrTokenExpired):
		return tokenError("expired", "token has expired")
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return tokenError("not_yet_valid", "token is not valid yet")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return tokenError("issuer", "token issuer is wrong")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return tokenError("audience", "token audience is wrong")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return tokenError("claims", "token lacks a required claim")
	}
	if alg := headerAlg(raw); alg != jwt.SigningMethodHS256.Alg() {
		return tokenError("algorithm", "token algorithm must be HS256")
	}
	if errors.Is(err, jwt.ErrTokenSignatureInvalid) {
		return tokenError("signature", "token signature is invalid")
	}
	return tokenError("claims", "token claims are invalid")
}

// headerAlg reads the alg of an unverified token, for error reporting only.
func headerAlg(raw string) string {
	var c jwt.MapClaims
	tok, _, err := jwt.NewParser().ParseUnverified(raw, &c)
	if err != nil || tok == nil {
		return ""
	}
	alg, _ := tok.Header["alg"].(string)
	return alg
}

func truncateScope(s Scope) string {
	if len(s) > 32 {
		return string(s[:32]) + "..."
	}
	return string(s)
}
