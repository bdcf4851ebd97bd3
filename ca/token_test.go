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
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestTokenKey_CreatedOnceWith0600(t *testing.T) {
	dir := t.TempDir()
	k1, created, err := LoadOrCreateTokenKey(dir)
	if err != nil || !created || len(k1) != tokenKeyBytes {
		t.Fatalf("create: %v %v %d", created, err, len(k1))
	}
	st, _ := os.Stat(filepath.Join(dir, TokenKeyFile))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("token.key mode %v", st.Mode().Perm())
	}
	k2, created, err := LoadOrCreateTokenKey(dir)
	if err != nil || created || string(k1) != string(k2) {
		t.Fatal("second start did not reuse the key")
	}
}

func TestTokens_Verify(t *testing.T) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	tokens := NewTokens(key)
	now := time.Now()
	mk := func(spec TokenSpec, at time.Time) string {
		tok, err := tokens.Create(spec, at)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	sign := func(m jwt.SigningMethod, k any, c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	claims := func(kv ...any) jwt.MapClaims {
		c := jwt.MapClaims{"iss": tokenIssuer, "aud": tokenAudience, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "jti": "j", "scope": "enroll"}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(c, kv[i].(string))
			} else {
				c[kv[i].(string)] = kv[i+1]
			}
		}
		return c
	}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	enroll := mk(TokenSpec{Scope: ScopeEnroll, TTL: time.Hour}, now)
	parts := strings.Split(enroll, ".")
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."

	tests := []struct {
		name   string
		token  string
		want   Scope
		reason string
	}{
		{"valid enroll", enroll, ScopeEnroll, ""},
		{"admin reads discovery", mk(TokenSpec{Scope: ScopeAdmin, TTL: time.Hour}, now), ScopeDiscovery, ""},
		{"empty", "", ScopeEnroll, "missing"},
		{"garbage", "garbage", ScopeEnroll, "malformed"},
		{"oversize", strings.Repeat("a", maxTokenSize+1), ScopeEnroll, "malformed"},
		{"alg none", none, ScopeEnroll, "algorithm"},
		{"HS512", sign(jwt.SigningMethodHS512, key, claims()), ScopeEnroll, "algorithm"},
		{"RS256", sign(jwt.SigningMethodRS256, rsaKey, claims()), ScopeEnroll, "algorithm"},
		{"tampered", parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2])), ScopeEnroll, "signature"},
		{"other key", sign(jwt.SigningMethodHS256, []byte("another secret of enough length!"), claims()), ScopeEnroll, "signature"},
		{"expired", mk(TokenSpec{Scope: ScopeEnroll, TTL: time.Minute}, now.Add(-time.Hour)), ScopeEnroll, "expired"},
		{"no exp", sign(jwt.SigningMethodHS256, key, claims("exp", nil)), ScopeEnroll, "claims"},
		{"no jti", sign(jwt.SigningMethodHS256, key, claims("jti", nil)), ScopeEnroll, "claims"},
		{"wrong aud", sign(jwt.SigningMethodHS256, key, claims("aud", "x")), ScopeEnroll, "audience"},
		{"wrong iss", sign(jwt.SigningMethodHS256, key, claims("iss", "x")), ScopeEnroll, "issuer"},
		{"future", sign(jwt.SigningMethodHS256, key, claims("nbf", now.Add(time.Hour).Unix())), ScopeEnroll, "not_yet_valid"},
		{"wrong scope", mk(TokenSpec{Scope: ScopeDiscovery, TTL: time.Hour}, now), ScopeEnroll, "scope"},
		{"enroll for admin", enroll, ScopeAdmin, "scope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tokens.Verify(tt.token, tt.want, now)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if c.ID == "" {
					t.Fatal("no jti")
				}
				return
			}
			var te *TokenError
			if !errors.As(err, &te) || te.Reason != tt.reason {
				t.Fatalf("error %v, want reason %q", err, tt.reason)
			}
			if tt.token != "" && strings.Contains(err.Error(), tt.token) {
				t.Fatal("error message carries the token")
			}
		})
	}
}

func FuzzVerifyToken(f *testing.F) {
	key := []byte("0123456789abcdef0123456789abcdef")
	tokens := NewTokens(key)
	tok, _ := tokens.Create(TokenSpec{Scope: ScopeEnroll, TTL: time.Hour}, time.Now())
	f.Add(tok)
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, raw string) {
		if c, err := tokens.Verify(raw, ScopeEnroll, time.Now()); err == nil && c.Scope != ScopeEnroll {
			t.Fatal("accepted a token of another scope")
		}
	})
}

func BenchmarkVerifyToken(b *testing.B) {
	tokens := NewTokens([]byte("0123456789abcdef0123456789abcdef"))
	tok, _ := tokens.Create(TokenSpec{Scope: ScopeEnroll, TTL: time.Hour}, time.Now())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tokens.Verify(tok, ScopeEnroll, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
