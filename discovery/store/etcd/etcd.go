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
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// DefaultPrefix is the key prefix of a Store unless one is given.
const DefaultPrefix = "/baremetal_sd/"

const (
	defaultEtcdDialTimeout    = 5 * time.Second
	defaultEtcdRequestTimeout = 5 * time.Second
	// defaultEtcdLeaseTTL outlives the registry's default TTL plus retention
	// (5m + 24h), so a replica started after another one died still learns
	// when the dead replica's hosts were last seen.
	defaultEtcdLeaseTTL = 25 * time.Hour

	// etcdShards is how many last-seen blobs one replica keeps: a heartbeat
	// flush writes at most this many keys, whatever the fleet size.
	etcdShards = 256
	// etcdTxnOps and etcdTxnBytes keep one Txn below etcd's default limits
	// (--max-txn-ops 128, --max-request-bytes 1.5 MiB).
	etcdTxnOps   = 64
	etcdTxnBytes = 1 << 20
	// etcdAgentPage and etcdBlobPage bound one range response when listing.
	etcdAgentPage = 1000
	etcdBlobPage  = 32

	maxReplicaIDLen = 128
	maxTokenIDLen   = 256
	// maxEtcdIDLen bounds an agent id in a key. Ids are at most
	// MaxAgentIDLen today; the store is lenient so that a newer replica
	// with longer ids does not make an older one fail.
	maxEtcdIDLen = 256
	// blobHashBits is the width of the agent numbers in last-seen blobs.
	// Within one blob, the agents of one shard (about 400 in a fleet of
	// 100,000), two numbers collide with a probability below 1e-9.
	blobHashBits = 48

	lastSeenBlobVersion = 1

	// maxUpdateAttempts bounds how often Update re-reads a record that
	// other replicas keep changing.
	maxUpdateAttempts = 16
	// claimLeaseWindow is how finely token claims' expiry is rounded up to
	// share leases.
	claimLeaseWindow = 10 * time.Minute
)

// Options configures a Store. Zero values take the defaults
// documented on each field.
type Options struct {
	// Endpoints are the etcd client URLs, for example https://10.0.0.1:2379.
	Endpoints []string
	// Prefix is prepended to every key (DefaultPrefix). Replicas that
	// share a registry use the same prefix; a trailing slash is added.
	Prefix string
	// DialTimeout bounds establishing the first connection and, with
	// Username, fetching the auth token (5s).
	DialTimeout time.Duration
	// RequestTimeout bounds every store operation, retries included (5s). An
	// operation that etcd did not acknowledge within it fails with an error
	// wrapping ErrUnavailable.
	RequestTimeout time.Duration
	// TLS is used for https endpoints; build it with prometheus/common's
	// config.NewTLSConfig.
	TLS *tls.Config
	// Username and Password enable etcd authentication.
	Username, Password string
	// ReplicaID names this server among the replicas sharing the prefix
	// (default: the hostname). A restarted replica keeps its id and so
	// reuses its last-seen keys. Two running processes cannot hold one id:
	// the second waits at List for as long as a crashed holder's presence
	// could last (LivenessTTL), then fails.
	ReplicaID string
	// LivenessTTL is the lease of the key that says this replica runs
	// (10s): after a crash the id is free again that long later.
	LivenessTTL time.Duration
	// Now is the clock of the time this replica started recording
	// heartbeats, which other replicas compare with their own (time.Now).
	Now func() time.Time
	// LeaseTTL is the lease of this replica's last-seen blobs: they vanish
	// that long after the replica stopped keeping the lease alive (25h).
	// Keep it above the agent TTL plus retention.
	LeaseTTL time.Duration
	Logger   *slog.Logger
}

// Stats counts what a Store asked of etcd, for benchmarks and
// tests.
type Stats struct {
	// WriteRequests counts Put, Delete, Txn and lease grant requests sent,
	// retries included: each is one Raft proposal.
	WriteRequests uint64
	// KeysWritten counts keys put or deleted by acknowledged requests.
	KeysWritten uint64
	// LastSeenKeysWritten is the part of KeysWritten that were last-seen
	// blobs.
	LastSeenKeysWritten uint64
	// BytesWritten counts the keys and values of acknowledged writes.
	BytesWritten uint64
	// Events counts events delivered by Watch.
	Events uint64
	// Resyncs counts full reads made because the watch fell behind etcd's
	// compaction (or started without a List).
	Resyncs uint64
	// UpdateConflicts counts Update writes refused because another replica
	// had changed the record since it was read; each was retried.
	UpdateConflicts uint64
}

// Store keeps the registry in etcd so that several server replicas
// share it.
//
// Key space, under Prefix:
//
//	agents/<id>                    the Agent as JSON, written by Put
//	lastseen/<replica>/<shard>     one replica's LastSeen times, see below
//	tokens/<jti>                   claimed single-use token ids
//	replicas/<replica>             present while the replica runs, see below
//	identity                       fingerprints of the shared CA and token key
//
// Heartbeats are not written per agent. Each replica keeps the LastSeen
// times of the agents that heartbeat through it in etcdShards blobs
// (shard = fnv32a(id) mod 256). A blob is a compact list of (48-bit hash
// of the id, unix milliseconds), delta-encoded in hash order: about 9
// bytes per agent instead of 32 with the id spelled out, which matters
// because a flush rewrites whole blobs. Readers map hashes back to the
// ids they know from the records; the rare collision within a shard gives
// both agents the time. Touch rewrites only the blobs whose entries moved,
// in Txns of up to 64 keys, so one flush costs at most 256 key writes in
// at most 4 requests whatever the fleet size. With 100,000 agents
// heartbeating through one replica and the registry flushing every 5s,
// that is at most 3,072 key writes (48 requests, about 11 MB) a minute
// instead of 100,000 writes; a 30s flush interval makes it 512 key writes
// (under 2 MB) a minute.
// Readers take the newest time of an agent over its record and every
// replica's blobs. A replica's blobs hang on one lease (LeaseTTL) that the
// replica keeps alive, so blobs of replicas that are gone disappear by
// themselves, late enough that replicas started meanwhile still read when
// the dead replica's hosts were last seen. Expiry needs no owner: every
// replica computes it from the LastSeen times, and purges are idempotent
// deletes.
//
// Watch follows the whole prefix from the revision of the last List and
// delivers other replicas' changes. Revision bookkeeping hides this
// replica's own writes: an event at or below the revision this replica last
// wrote or saw for the agent is stale and dropped, and events that arrive
// while a write of the same agent is in flight are held until it returns.
// A write that failed on our side but was committed in etcd does come back
// as an event, so memory converges on what etcd holds. When the watch has
// fallen behind compaction, the store reads everything again and delivers
// the differences as events (puts, deletes, then touches).
//
// Registrations and changes are read-modify-writes of a record (Update)
// conditioned on its ModRevision, so a change made through one replica is
// never overwritten by another replica working from an older copy. A
// single-use token's claim is created in the same Txn, which succeeds only
// if the claim key does not exist yet: a registration that fails leaves the
// token unused. Claims hang on leases shared per claimLeaseWindow of token
// expiry. Revocations are part of the agent records and so shared by all
// replicas.
//
// A running replica keeps replicas/<id> on a short lease (LivenessTTL),
// created only if absent when the first List takes the id and revoked on
// Close. Its presence tells a replica that starts whether others were
// running (LiveSince, which decides the restart grace) and stops two
// processes from using one replica id.
//
// Every failed request wraps ErrUnavailable. Writes that may be retried
// without changing their meaning are retried on transient errors (lost
// leader, connection to a dead member) within RequestTimeout.
type Store struct {
	cli    *clientv3.Client
	opts   Options
	logger *slog.Logger

	agentsPrefix   string
	lastSeenPrefix string
	ownPrefix      string
	tokensPrefix   string
	replicasPrefix string
	replicaKey     string
	identityKey    string

	// bg ends when the store closes and stops the lease keep-alive and the
	// watch.
	bg     context.Context
	stopBG context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	mirror    map[string]*mirrorEntry
	byHash    hashIndex // blob hash -> ids of the mirror's entries
	tombs     []tomb
	resumeRev int64       // the next Watch starts after this revision
	watcher   *eventQueue // the running Watch, nil if none

	// touchMu serializes Touch and the lease; it guards own and lease.
	touchMu sync.Mutex
	own     [etcdShards]ownShard
	lease   clientv3.LeaseID

	// replicaMu guards replica: this process's presence (replicas/<id>).
	replicaMu sync.Mutex
	replica   replicaState
	// idTaken is set while another process holds our replica id.
	idTaken atomic.Bool

	// prober names the cause when requests time out for want of a
	// connection.
	prober *endpointProber

	// claimMu guards claimLeases: lease per end of an expiry window.
	claimMu     sync.Mutex
	claimLeases map[time.Time]clientv3.LeaseID

	writeRequests, keysWritten, blobsWritten, bytesWritten, events, resyncs, conflicts atomic.Uint64
}

// Open connects to etcd. Without credentials it does not wait for
// etcd; with credentials it retries fetching the auth token until ctx ends.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("open etcd store: no endpoints")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(opts.Prefix, "/") {
		opts.Prefix += "/"
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = defaultEtcdDialTimeout
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = defaultEtcdRequestTimeout
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = defaultEtcdLeaseTTL
	}
	if opts.LeaseTTL < 10*time.Second {
		opts.LeaseTTL = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LivenessTTL <= 0 {
		opts.LivenessTTL = defaultEtcdLivenessTTL
	}
	opts.LivenessTTL = max(opts.LivenessTTL.Truncate(time.Second), 2*time.Second)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ReplicaID == "" {
		id, err := DefaultReplicaID()
		if err != nil {
			return nil, fmt.Errorf("open etcd store: %w", err)
		}
		opts.ReplicaID = id
	}
	if err := validateReplicaID(opts.ReplicaID); err != nil {
		return nil, fmt.Errorf("open etcd store: %w", err)
	}
	cfg := clientv3.Config{
		Endpoints:   opts.Endpoints,
		DialTimeout: opts.DialTimeout,
		// Keepalives notice a member that vanished without closing its
		// connections, so requests move to the others.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		PermitWithoutStream:  true,
		TLS:                  opts.TLS,
		Username:             opts.Username,
		Password:             opts.Password,
		// The client's own log is zap; failures reach our log through the
		// errors they return.
		Logger: zap.NewNop(),
		// gRPC's default reconnect backoff grows to two minutes: after an
		// etcd outage the store would stay unavailable that long after
		// etcd is back.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: opts.DialTimeout,
		})},
	}
	var cli *clientv3.Client
	bo := newEtcdBackoff(100*time.Millisecond, 5*time.Second)
	for {
		var err error
		cli, err = clientv3.New(cfg)
		if err == nil {
			break
		}
		if !errors.Is(err, context.DeadlineExceeded) && !retryableEtcdErr(err) {
			return nil, fmt.Errorf("open etcd store: %w", err)
		}
		opts.Logger.Warn("Connecting to etcd failed; retrying", "endpoints", strings.Join(opts.Endpoints, ","), "err", err)
		if !bo.wait(ctx) {
			return nil, fmt.Errorf("open etcd store: %w: %w", store.ErrUnavailable, err)
		}
	}
	bg, stop := context.WithCancel(context.Background())
	s := &Store{
		cli:            cli,
		opts:           opts,
		logger:         opts.Logger,
		agentsPrefix:   opts.Prefix + "agents/",
		lastSeenPrefix: opts.Prefix + "lastseen/",
		ownPrefix:      opts.Prefix + "lastseen/" + opts.ReplicaID + "/",
		tokensPrefix:   opts.Prefix + "tokens/",
		replicasPrefix: opts.Prefix + "replicas/",
		replicaKey:     opts.Prefix + "replicas/" + opts.ReplicaID,
		identityKey:    opts.Prefix + "identity",
		bg:             bg,
		stopBG:         stop,
		mirror:         make(map[string]*mirrorEntry),
		byHash:         newHashIndex(0),
		claimLeases:    make(map[time.Time]clientv3.LeaseID),
		prober:         &endpointProber{endpoints: opts.Endpoints, tls: opts.TLS},
	}
	s.replica.val = newReplicaRecord(opts.Now())
	s.logger.Info("Using etcd for the registry", "endpoints", strings.Join(opts.Endpoints, ","), "prefix", opts.Prefix, "replica", opts.ReplicaID)
	return s, nil
}

// DefaultReplicaID is the replica id of a server that names none: its
// hostname, which must then be a valid id.
func DefaultReplicaID() (string, error) {
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("default replica id: %w", err)
	}
	if err := validateReplicaID(host); err != nil {
		return "", fmt.Errorf("default replica id from the hostname: %w", err)
	}
	return host, nil
}

func isReplicaIDChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
}

// ValidateReplicaID checks a replica id: it names keys in etcd.
func ValidateReplicaID(id string) error { return validateReplicaID(id) }

func validateReplicaID(id string) error {
	if id == "" || len(id) > maxReplicaIDLen {
		return fmt.Errorf("replica id must have 1 to %d characters", maxReplicaIDLen)
	}
	for i := 0; i < len(id); i++ {
		if !isReplicaIDChar(id[i]) {
			return fmt.Errorf("replica id %q is invalid: use [a-zA-Z0-9._-]", protocol.Truncate(id))
		}
	}
	return nil
}

// ReplicaID returns the id this store writes its last-seen blobs under.
func (s *Store) ReplicaID() string { return s.opts.ReplicaID }

// Stats returns counters of the requests made so far.
func (s *Store) Stats() Stats {
	return Stats{
		WriteRequests:       s.writeRequests.Load(),
		KeysWritten:         s.keysWritten.Load(),
		LastSeenKeysWritten: s.blobsWritten.Load(),
		BytesWritten:        s.bytesWritten.Load(),
		Events:              s.events.Load(),
		Resyncs:             s.resyncs.Load(),
		UpdateConflicts:     s.conflicts.Load(),
	}
}

// Healthy reports whether etcd answers a linearizable read, which needs a
// quorum: the check behind /-/ready.
func (s *Store) Healthy(ctx context.Context) error {
	if s.idTaken.Load() {
		return fmt.Errorf("etcd health check: replica id %q is held by another server process", s.opts.ReplicaID)
	}
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	return s.do(ctx, "etcd health check", func(ctx context.Context) error {
		_, err := s.cli.Get(ctx, s.opts.Prefix+"health", clientv3.WithCountOnly())
		return err
	})
}

// errLeaseLost makes do retry a write after the replica's lease was found
// gone and replaced.
var errLeaseLost = errors.New("last-seen lease lost")

// retryableEtcdErr says whether a request may succeed when sent again: the
// member was unreachable, lost its leader or is overloaded.
func retryableEtcdErr(err error) bool {
	if errors.Is(err, errLeaseLost) || errors.Is(err, rpctypes.ErrTooManyRequests) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable
	}
	if st, ok := status.FromError(err); ok {
		return st.Code() == codes.Unavailable
	}
	return false
}

// do runs one request, retrying transient failures until ctx ends, and
// wraps a final failure in ErrUnavailable. op must be safe to repeat.
//
// One attempt gets half the request timeout: a proposal that reached a
// leader just before it died is only answered after the server's own
// timeout (5s plus two election timeouts), while the same request sent
// again reaches the new leader at once.
func (s *Store) do(ctx context.Context, what string, op func(ctx context.Context) error) error {
	bo := newEtcdBackoff(25*time.Millisecond, 500*time.Millisecond)
	attempt := max(s.opts.RequestTimeout/2, 500*time.Millisecond)
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := op(actx)
		expired := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			return nil
		}
		if (!expired && !retryableEtcdErr(err)) || !bo.wait(ctx) {
			return fmt.Errorf("%s: %w: %w", what, store.ErrUnavailable, s.prober.explain(err))
		}
	}
}

func (s *Store) requestCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.RequestTimeout)
}

// Close implements Store. Blobs that could not be written are tried once
// more. The lease is left to expire rather than revoked: the times it
// carries stay useful to replicas started later.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	s.touchMu.Lock()
	dirty := false
	for i := range s.own {
		dirty = dirty || s.own[i].dirty
	}
	if dirty {
		ctx, cancel := s.requestCtx(context.Background())
		if err := s.flushLocked(ctx); err != nil {
			s.logger.Warn("Writing the last heartbeats to etcd failed", "err", err)
		}
		cancel()
	}
	s.touchMu.Unlock()

	s.releaseReplica()
	s.stopBG()
	err := s.cli.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client: %w", err)
	}
	return nil
}

var (
	_ store.Store         = (*Store)(nil)
	_ store.HealthChecker = (*Store)(nil)
)
