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

package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ClusterIdentity is what every server replica sharing an etcd prefix must
// hold alike: fingerprints of the CA certificate and of the token signing
// key. Only hashes are stored; the key files never leave the data
// directories.
type ClusterIdentity struct {
	// CACertSHA256 is the hex SHA-256 of the CA certificate (DER).
	CACertSHA256 string `json:"ca_cert_sha256"`
	// TokenKeySHA256 is a hex SHA-256 over the token key.
	TokenKeySHA256 string `json:"token_key_sha256"`
	// IssuersSHA256 is the hex SHA-256 over the agent and client CA
	// certificates (DER); empty in an identity a 0.1.0 replica published.
	IssuersSHA256 string `json:"issuers_sha256,omitempty"`
}

// Identity returns the identity the first replica published, nil if there
// is none yet. Like List, it waits for etcd until ctx ends.
func (s *Store) Identity(ctx context.Context) (*ClusterIdentity, error) {
	var out *ClusterIdentity
	err := s.retryUntil(ctx, "read the replicas' identity", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, s.identityKey)
		if err != nil {
			return err
		}
		out = nil
		if len(resp.Kvs) == 1 {
			if out, err = decodeIdentity(resp.Kvs[0].Value); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// PublishIdentity stores id unless an identity is stored already, and
// returns the stored one: id itself, or the one another replica published
// first.
func (s *Store) PublishIdentity(ctx context.Context, id ClusterIdentity) (ClusterIdentity, error) {
	data, err := json.Marshal(id)
	if err != nil {
		return id, fmt.Errorf("encode identity: %w", err)
	}
	out := id
	err = s.retryUntil(ctx, "publish the replicas' identity", func(ctx context.Context) error {
		s.writeRequests.Add(1)
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(s.identityKey), "=", 0)).
			Then(clientv3.OpPut(s.identityKey, string(data))).
			Else(clientv3.OpGet(s.identityKey)).
			Commit()
		if err != nil {
			return err
		}
		out = id
		if !resp.Succeeded {
			kvs := resp.Responses[0].GetResponseRange().GetKvs()
			if len(kvs) != 1 {
				return errors.New("identity vanished while publishing it")
			}
			stored, err := decodeIdentity(kvs[0].Value)
			if err != nil {
				return err
			}
			out = *stored
		}
		return nil
	})
	return out, err
}

// UpgradeIdentity replaces the identity old, as a replica of an older
// version published it, with id, unless another replica replaced it
// first; it returns the stored identity.
func (s *Store) UpgradeIdentity(ctx context.Context, old, id ClusterIdentity) (ClusterIdentity, error) {
	data, err := json.Marshal(id)
	if err != nil {
		return id, fmt.Errorf("encode identity: %w", err)
	}
	out := id
	err = s.retryUntil(ctx, "upgrade the replicas' identity", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, s.identityKey)
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 1 {
			return &permanentError{errors.New("identity vanished while upgrading it")}
		}
		stored, err := decodeIdentity(resp.Kvs[0].Value)
		if err != nil {
			return err
		}
		if *stored != old {
			out = *stored
			return nil
		}
		// Replaced only if nobody wrote it since we read it; otherwise
		// retryUntil reads again and finds the other replica's.
		s.writeRequests.Add(1)
		txn, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.identityKey), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(s.identityKey, string(data))).
			Commit()
		if err != nil {
			return err
		}
		if !txn.Succeeded {
			return errors.New("identity changed while upgrading it")
		}
		out = id
		return nil
	})
	return out, err
}

func decodeIdentity(data []byte) (*ClusterIdentity, error) {
	var id ClusterIdentity
	if err := json.Unmarshal(data, &id); err != nil || id.CACertSHA256 == "" || id.TokenKeySHA256 == "" {
		return nil, &permanentError{fmt.Errorf("stored identity %.200q is corrupt", data)}
	}
	return &id, nil
}

// permanentError stops retryUntil: asking again gives the same answer.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// retryUntil runs op like do, and while etcd cannot be reached retries with
// backoff until ctx ends, as List does at start-up.
func (s *Store) retryUntil(ctx context.Context, what string, op func(ctx context.Context) error) error {
	bo := newEtcdBackoff(100*time.Millisecond, 5*time.Second)
	for {
		var permanent *permanentError
		rctx, cancel := s.requestCtx(ctx)
		err := s.do(rctx, what, func(ctx context.Context) error {
			err := op(ctx)
			if errors.As(err, &permanent) {
				return nil
			}
			return err
		})
		cancel()
		if permanent != nil {
			return fmt.Errorf("%s: %w", what, permanent.err)
		}
		if err == nil {
			return nil
		}
		s.logger.Warn("etcd request failed; retrying", "request", what, "err", err)
		if !bo.wait(ctx) {
			return err
		}
	}
}
