package discovery

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultEtcdPrefix is the key prefix of an EtcdStore unless one is given.
const DefaultEtcdPrefix = "/baremetal_sd/"

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

// EtcdOptions configures an EtcdStore. Zero values take the defaults
// documented on each field.
type EtcdOptions struct {
	// Endpoints are the etcd client URLs, for example https://10.0.0.1:2379.
	Endpoints []string
	// Prefix is prepended to every key (DefaultEtcdPrefix). Replicas that
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

// EtcdStats counts what an EtcdStore asked of etcd, for benchmarks and
// tests.
type EtcdStats struct {
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

// EtcdStore keeps the registry in etcd so that several server replicas
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
type EtcdStore struct {
	cli    *clientv3.Client
	opts   EtcdOptions
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

// mirrorEntry is what the store knows about one agent key.
type mirrorEntry struct {
	// rev is the newest revision of the key this process has applied or
	// written: events at or below it are stale.
	rev     int64
	deleted bool
	// inflight counts this process's writes of the key that have not
	// returned; events that arrive meanwhile wait in held.
	inflight int
	held     []heldEvent
}

type heldEvent struct {
	rev int64
	ev  Event
}

// tomb lists a deleted agent whose mirror entry can go once the watch has
// passed rev.
type tomb struct {
	id  string
	rev int64
}

// ownShard holds this replica's LastSeen times of one blob.
type ownShard struct {
	seen  map[string]int64
	dirty bool
}

// OpenEtcdStore connects to etcd. Without credentials it does not wait for
// etcd; with credentials it retries fetching the auth token until ctx ends.
func OpenEtcdStore(ctx context.Context, opts EtcdOptions) (*EtcdStore, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("open etcd store: no endpoints")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultEtcdPrefix
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
			return nil, fmt.Errorf("open etcd store: %w: %w", ErrUnavailable, err)
		}
	}
	bg, stop := context.WithCancel(context.Background())
	s := &EtcdStore{
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
func (s *EtcdStore) ReplicaID() string { return s.opts.ReplicaID }

// Stats returns counters of the requests made so far.
func (s *EtcdStore) Stats() EtcdStats {
	return EtcdStats{
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
func (s *EtcdStore) Healthy(ctx context.Context) error {
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
func (s *EtcdStore) do(ctx context.Context, what string, op func(ctx context.Context) error) error {
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
			return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, s.prober.explain(err))
		}
	}
}

func (s *EtcdStore) requestCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.RequestTimeout)
}

// List implements Store. It reads a consistent snapshot (one revision) of
// the records and blobs; the next Watch starts after it. While etcd cannot
// be reached it retries until ctx ends, so a server started before etcd
// comes up waits for it.
func (s *EtcdStore) List(ctx context.Context) ([]Agent, error) {
	bo := newEtcdBackoff(100*time.Millisecond, 5*time.Second)
	for {
		// The first List takes the replica id: from here on this process
		// records heartbeats under it.
		err := s.claimReplica(ctx)
		if errors.Is(err, errReplicaIDInUse) {
			return nil, err
		}
		var agents []Agent
		if err == nil {
			agents, err = s.list(ctx)
		}
		if err == nil {
			return agents, nil
		}
		s.logger.Warn("Reading the registry from etcd failed; retrying", "err", err)
		if !bo.wait(ctx) {
			return nil, err
		}
	}
}

func (s *EtcdStore) list(ctx context.Context) ([]Agent, error) {
	snap, err := s.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Agent, 0, len(snap.agents))
	for _, r := range snap.agents {
		a := r.agent
		if ns, ok := snap.lastSeen[a.ID]; ok && ns > a.LastSeen.UnixNano() {
			a.LastSeen = time.Unix(0, ns)
		}
		out = append(out, a)
	}

	s.replicaMu.Lock()
	s.replica.liveSince = snap.liveSince
	s.replicaMu.Unlock()

	// Times this replica id wrote before (a restart) are kept, or the next
	// flush would drop them.
	s.touchMu.Lock()
	for id, ns := range snap.ownSeen {
		sh := &s.own[etcdShardOf(id)]
		if sh.seen == nil {
			sh.seen = make(map[string]int64)
		}
		if ns > sh.seen[id] {
			sh.seen[id] = ns
		}
	}
	s.touchMu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watcher != nil {
		// The running watch delivers everything after its own revision;
		// only raise what we know.
		for _, r := range snap.agents {
			e := s.entryLocked(r.agent.ID)
			if e.inflight == 0 && r.rev > e.rev {
				e.rev, e.deleted = r.rev, false
			}
		}
		return out, nil
	}
	old := s.mirror
	s.mirror = make(map[string]*mirrorEntry, len(snap.agents))
	s.byHash = newHashIndex(len(snap.agents))
	for id, e := range old {
		// Writes in flight or newer than the snapshot stay known.
		if e.inflight > 0 || e.rev > snap.rev {
			s.mirror[id] = e
			s.byHash.add(id)
		}
	}
	for _, r := range snap.agents {
		e := s.entryLocked(r.agent.ID)
		if e.inflight == 0 && r.rev > e.rev {
			e.rev, e.deleted = r.rev, false
		}
	}
	s.tombs = s.tombs[:0]
	for id, e := range s.mirror {
		if e.deleted {
			s.tombs = append(s.tombs, tomb{id, e.rev})
		}
	}
	s.resumeRev = snap.rev
	return out, nil
}

type snapAgent struct {
	agent Agent
	rev   int64
}

// etcdSnapshot is the registry at one revision.
type etcdSnapshot struct {
	rev    int64
	agents []snapAgent
	// lastSeen is the newest blob time per agent over all replicas;
	// ownSeen holds the times in this replica's own blobs.
	lastSeen map[string]int64
	ownSeen  map[string]int64
	// foreign are the other replicas' blob entries, for resync.
	foreign []Touch
	// liveSince is the earliest start of the other running replicas.
	liveSince time.Time
}

func (s *EtcdStore) snapshot(ctx context.Context) (*etcdSnapshot, error) {
	snap := &etcdSnapshot{lastSeen: make(map[string]int64), ownSeen: make(map[string]int64)}
	rev, err := s.rangeAll(ctx, s.agentsPrefix, 0, etcdAgentPage, func(kv *mvccpb.KeyValue) {
		id := string(kv.Key[len(s.agentsPrefix):])
		a, err := decodeAgentRecord(id, kv.Value)
		if err != nil {
			s.logger.Error("Skipping corrupt registry record", "agent_id", protocol.Truncate(id), "err", err)
			return
		}
		snap.agents = append(snap.agents, snapAgent{agent: a, rev: kv.ModRevision})
	})
	if err != nil {
		return nil, err
	}
	snap.rev = rev
	ids := newHashIndex(len(snap.agents))
	for _, r := range snap.agents {
		ids.add(r.agent.ID)
	}
	_, err = s.rangeAll(ctx, s.lastSeenPrefix, rev, etcdBlobPage, func(kv *mvccpb.KeyValue) {
		replica, ok := s.parseBlobKey(string(kv.Key))
		if !ok {
			return
		}
		own := replica == s.opts.ReplicaID
		err := decodeLastSeen(kv.Value, func(hash uint64, ns int64) {
			ids.each(hash, func(id string) {
				if ns > snap.lastSeen[id] {
					snap.lastSeen[id] = ns
				}
				if own {
					if ns > snap.ownSeen[id] {
						snap.ownSeen[id] = ns
					}
					return
				}
				snap.foreign = append(snap.foreign, Touch{ID: id, LastSeen: time.Unix(0, ns)})
			})
		})
		if err != nil {
			s.logger.Error("Skipping corrupt last-seen blob", "key", string(kv.Key), "err", err)
		}
	})
	if err != nil {
		return nil, err
	}
	var present []*mvccpb.KeyValue
	if _, err := s.rangeAll(ctx, s.replicasPrefix, rev, etcdAgentPage, func(kv *mvccpb.KeyValue) { present = append(present, kv) }); err != nil {
		return nil, err
	}
	snap.liveSince = s.liveSinceOf(present)
	return snap, nil
}

// rangeAll reads every key under prefix at revision rev (0: the current
// one) in pages, calls fn for each and returns the revision read.
func (s *EtcdStore) rangeAll(ctx context.Context, prefix string, rev, page int64, fn func(kv *mvccpb.KeyValue)) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		var resp *clientv3.GetResponse
		rctx, cancel := s.requestCtx(ctx)
		err := s.do(rctx, "list "+prefix, func(ctx context.Context) error {
			var err error
			resp, err = s.cli.Get(ctx, key, opts...)
			return err
		})
		cancel()
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			fn(kv)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func decodeAgentRecord(id string, data []byte) (Agent, error) {
	var a Agent
	if err := json.Unmarshal(data, &a); err != nil {
		return a, err
	}
	if a.ID != id {
		return a, fmt.Errorf("record of %q is stored under %q", protocol.Truncate(a.ID), protocol.Truncate(id))
	}
	return a, nil
}

// parseBlobKey returns the replica of a last-seen blob key.
func (s *EtcdStore) parseBlobKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, s.lastSeenPrefix)
	if !ok {
		return "", false
	}
	replica, shard, ok := strings.Cut(rest, "/")
	if !ok || replica == "" || len(shard) != 2 {
		return "", false
	}
	if _, err := strconv.ParseUint(shard, 16, 8); err != nil {
		return "", false
	}
	return replica, true
}

func (s *EtcdStore) blobKey(shard int) string {
	return fmt.Sprintf("%s%02x", s.ownPrefix, shard)
}

func etcdShardOf(id string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % etcdShards)
}

// entryLocked returns the mirror entry of id, creating it.
func (s *EtcdStore) entryLocked(id string) *mirrorEntry {
	e := s.mirror[id]
	if e == nil {
		e = &mirrorEntry{}
		s.mirror[id] = e
		s.byHash.add(id)
	}
	return e
}

// dropLocked forgets id.
func (s *EtcdStore) dropLocked(id string) {
	delete(s.mirror, id)
	s.byHash.remove(id)
}

// knownLocked says whether id is a live agent as far as this store knows.
func (s *EtcdStore) knownLocked(id string) bool {
	e := s.mirror[id]
	return e != nil && !e.deleted && e.rev > 0
}

// begin marks a write of id in flight.
func (s *EtcdStore) begin(id string) {
	s.mu.Lock()
	s.entryLocked(id).inflight++
	s.mu.Unlock()
}

// end records the outcome of a write of id begun with begin: on success,
// the revision it produced. Events held meanwhile are then delivered or
// dropped as stale.
func (s *EtcdStore) end(id string, rev int64, deleted, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entryLocked(id)
	e.inflight--
	if ok && rev > e.rev {
		e.rev, e.deleted = rev, deleted
		if deleted {
			s.tombs = append(s.tombs, tomb{id, rev})
		}
	}
	if e.inflight > 0 {
		return
	}
	if held := e.held; len(held) > 0 {
		e.held = nil
		for _, h := range held {
			s.deliverLocked(id, h.rev, h.ev)
		}
	}
	if e.rev == 0 && len(e.held) == 0 {
		s.dropLocked(id) // a failed first write leaves nothing behind
	}
}

// deliverLocked passes an agent event at rev to the watcher unless it is
// stale, or holds it while a write of the same agent is in flight.
func (s *EtcdStore) deliverLocked(id string, rev int64, ev Event) {
	e := s.mirror[id]
	if e == nil {
		if ev.Type == EventDelete {
			return // never seen, nothing to remove
		}
		e = s.entryLocked(id)
	}
	if e.inflight > 0 {
		e.held = append(e.held, heldEvent{rev, ev})
		return
	}
	if rev <= e.rev {
		return
	}
	e.rev = rev
	e.deleted = ev.Type == EventDelete
	if e.deleted {
		s.tombs = append(s.tombs, tomb{id, rev})
	}
	s.watcher.push(ev)
}

// progressLocked forgets deleted agents the watch has moved past: no event
// at or below their deletion can arrive any more.
func (s *EtcdStore) progressLocked(rev int64) {
	keep := s.tombs[:0]
	for _, t := range s.tombs {
		if t.rev > rev {
			keep = append(keep, t)
			continue
		}
		if e := s.mirror[t.id]; e != nil && e.deleted && e.rev <= rev && e.inflight == 0 && len(e.held) == 0 {
			s.dropLocked(t.id)
		}
	}
	clear(s.tombs[len(keep):])
	s.tombs = keep
}

// Put implements Store: the record is acknowledged once etcd committed it.
func (s *EtcdStore) Put(ctx context.Context, a *Agent) error {
	if a.ID == "" || len(a.ID) > maxEtcdIDLen {
		return fmt.Errorf("put agent: invalid id %q", protocol.Truncate(a.ID))
	}
	data, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode agent %q: %w", a.ID, err)
	}
	key, val := s.agentsPrefix+a.ID, string(data)
	var rev int64
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	s.begin(a.ID)
	err = s.do(ctx, fmt.Sprintf("put agent %q", a.ID), func(ctx context.Context) error {
		s.writeRequests.Add(1)
		resp, err := s.cli.Put(ctx, key, val)
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	s.end(a.ID, rev, false, err == nil)
	if err != nil {
		return err
	}
	s.keysWritten.Add(1)
	s.bytesWritten.Add(uint64(len(key) + len(val)))
	return nil
}

// Update implements Store with optimistic concurrency: it reads the record
// and its ModRevision, and writes in a Txn that succeeds only if the record
// is still at that revision (and, with a claim, only if the token key does
// not exist yet). When another replica changed the record in between, fn
// runs again on the new record, at most maxUpdateAttempts times.
//
// A Txn that etcd committed but whose answer was lost is sent again by do;
// the compare then fails, and the Else branch shows our own claim or, after
// such a resend only, our own value, which is taken as success rather than
// as a conflict.
func (s *EtcdStore) Update(ctx context.Context, id string, claim *TokenClaim, fn UpdateFunc) (*Agent, error) {
	if id == "" || len(id) > maxEtcdIDLen {
		return nil, fmt.Errorf("update agent: invalid id %q", protocol.Truncate(id))
	}
	key := s.agentsPrefix + id
	var claimKey, claimVal string
	if claim != nil {
		if claim.ID == "" || len(claim.ID) > maxTokenIDLen {
			return nil, fmt.Errorf("claim token: id must have 1 to %d characters", maxTokenIDLen)
		}
		claimKey = s.tokensPrefix + claim.ID
		var nonce [8]byte
		_, _ = rand.Read(nonce[:])
		claimVal = s.opts.ReplicaID + "/" + hex.EncodeToString(nonce[:])
	}
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	var (
		rev     int64
		deleted bool
		done    bool
	)
	s.begin(id)
	defer func() { s.end(id, rev, deleted, done) }()

	// The first read also looks at the claim, so that a reused token is
	// refused before fn runs.
	readOps := []clientv3.Op{clientv3.OpGet(key)}
	if claim != nil {
		readOps = append(readOps, clientv3.OpGet(claimKey, clientv3.WithCountOnly()))
	}
	var read *clientv3.TxnResponse
	err := s.do(ctx, fmt.Sprintf("read agent %q", id), func(ctx context.Context) error {
		var err error
		read, err = s.cli.Txn(ctx).Then(readOps...).Commit()
		return err
	})
	if err != nil {
		return nil, err
	}
	if claim != nil && read.Responses[1].GetResponseRange().Count > 0 {
		return nil, ErrTokenUsed
	}
	kvs := read.Responses[0].GetResponseRange().GetKvs()

	var result *Agent
	conflictBackoff := newEtcdBackoff(2*time.Millisecond, 100*time.Millisecond)
	conflictBackoff.full = true
	for attempt := 1; ; attempt++ {
		var cur *Agent
		curRev := int64(0)
		if len(kvs) == 1 {
			a, err := decodeAgentRecord(id, kvs[0].Value)
			if err != nil {
				return nil, fmt.Errorf("update agent %q: stored record: %w", id, err)
			}
			cur, curRev = &a, kvs[0].ModRevision
		}
		next, err := fn(cur)
		if err != nil {
			return nil, err
		}
		var val string
		op := clientv3.OpDelete(key)
		if next != nil {
			if next.ID != id {
				return nil, fmt.Errorf("update agent %q: the new record is for %q", id, protocol.Truncate(next.ID))
			}
			data, err := json.Marshal(next)
			if err != nil {
				return nil, fmt.Errorf("encode agent %q: %w", id, err)
			}
			val = string(data)
			op = clientv3.OpPut(key, val)
		}

		var resp *clientv3.TxnResponse
		sent := 0
		err = s.do(ctx, fmt.Sprintf("update agent %q", id), func(ctx context.Context) error {
			sent++
			cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", curRev)}
			ops := []clientv3.Op{op}
			elseOps := []clientv3.Op{clientv3.OpGet(key)}
			var lease clientv3.LeaseID
			if claim != nil {
				var err error
				if lease, err = s.claimLease(ctx, claim.Expires); err != nil {
					return err
				}
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(claimKey), "=", 0))
				ops = append(ops, clientv3.OpPut(claimKey, claimVal, clientv3.WithLease(lease)))
				elseOps = append(elseOps, clientv3.OpGet(claimKey))
			}
			s.writeRequests.Add(1)
			var err error
			resp, err = s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(elseOps...).Commit()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				s.dropClaimLease(lease)
				return errLeaseLost
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		committed := resp.Succeeded
		if committed {
			rev = resp.Header.Revision
		} else {
			kvs = resp.Responses[0].GetResponseRange().GetKvs()
			var ckvs []*mvccpb.KeyValue
			if claim != nil {
				ckvs = resp.Responses[1].GetResponseRange().GetKvs()
			}
			switch {
			case len(ckvs) == 1 && string(ckvs[0].Value) != claimVal:
				return nil, ErrTokenUsed
			case len(ckvs) == 1:
				// Our own earlier attempt committed, record included; the
				// claim's revision is that of the write.
				committed, rev = true, ckvs[0].ModRevision
			case sent > 1 && claim == nil && next != nil && len(kvs) == 1 && string(kvs[0].Value) == val:
				// An earlier send of this Txn failed on our side: the value
				// is ours. (Only then: two writers that computed the same
				// record from the same one are a conflict, not a success.)
				committed, rev = true, kvs[0].ModRevision
			case claim == nil && next == nil && len(kvs) == 0:
				// Gone already: what fn asked for. Older events of the
				// agent are stale from here on.
				committed, rev = true, resp.Header.Revision
			}
		}
		if committed {
			deleted, done, result = next == nil, true, next
			s.keysWritten.Add(1)
			s.bytesWritten.Add(uint64(len(key) + len(val)))
			if claim != nil {
				s.keysWritten.Add(1)
				s.bytesWritten.Add(uint64(len(claimKey) + len(claimVal)))
			}
			break
		}
		s.conflicts.Add(1)
		// Writers that collided back off by random amounts, so one of them
		// gets through next time.
		if attempt >= maxUpdateAttempts || !conflictBackoff.wait(ctx) {
			return nil, fmt.Errorf("update agent %q: %w: the record kept changing (%d attempts)", id, ErrUnavailable, attempt)
		}
	}
	if result == nil {
		return nil, nil
	}
	return result.clone(), nil
}

// Delete implements Store. This replica's last-seen entry of the agent is
// dropped with the next write of its blob.
func (s *EtcdStore) Delete(ctx context.Context, id string) error {
	var rev int64
	var n int64
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	s.begin(id)
	err := s.do(ctx, fmt.Sprintf("delete agent %q", id), func(ctx context.Context) error {
		s.writeRequests.Add(1)
		resp, err := s.cli.Delete(ctx, s.agentsPrefix+id)
		if err == nil {
			rev, n = resp.Header.Revision, resp.Deleted
		}
		return err
	})
	// Even when nothing was deleted, the agent was absent at rev: older
	// events of it are stale.
	s.end(id, rev, true, err == nil)
	if err != nil {
		return err
	}
	s.keysWritten.Add(uint64(n))
	return nil
}

// Touch implements Store: the times move in this replica's blobs, and
// every blob with a moved entry is written, several per Txn.
func (s *EtcdStore) Touch(ctx context.Context, touches []Touch) error {
	s.touchMu.Lock()
	defer s.touchMu.Unlock()
	s.mu.Lock()
	for _, t := range touches {
		if !s.knownLocked(t.ID) {
			continue
		}
		ns := t.LastSeen.UnixNano()
		if ns <= 0 {
			continue // before 1970: not a heartbeat, and not encodable
		}
		sh := &s.own[etcdShardOf(t.ID)]
		if old, ok := sh.seen[t.ID]; ok && old >= ns {
			continue
		}
		if sh.seen == nil {
			sh.seen = make(map[string]int64)
		}
		sh.seen[t.ID] = ns
		sh.dirty = true
	}
	s.mu.Unlock()
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	return s.flushLocked(ctx)
}

type blobWrite struct {
	shard int
	key   string
	val   []byte // nil deletes the key
}

// flushLocked writes every dirty blob. touchMu is held.
func (s *EtcdStore) flushLocked(ctx context.Context) error {
	// A lost lease marks every blob dirty again; the second round writes
	// them under the new lease.
	for round := 0; round < 3; round++ {
		writes, err := s.encodeDirtyLocked()
		if err != nil || len(writes) == 0 {
			return err
		}
		for len(writes) > 0 {
			n, size := 0, 0
			for n < len(writes) && n < etcdTxnOps {
				sz := len(writes[n].key) + len(writes[n].val)
				if n > 0 && size+sz > etcdTxnBytes {
					break
				}
				size += sz
				n++
			}
			batch := writes[:n]
			writes = writes[n:]
			err := s.do(ctx, fmt.Sprintf("write %d last-seen blobs", len(batch)), func(ctx context.Context) error {
				return s.writeBlobsLocked(ctx, batch)
			})
			if err != nil {
				return err
			}
			for _, w := range batch {
				s.own[w.shard].dirty = false
			}
			s.keysWritten.Add(uint64(len(batch)))
			s.blobsWritten.Add(uint64(len(batch)))
			s.bytesWritten.Add(uint64(size))
		}
	}
	return nil
}

func (s *EtcdStore) writeBlobsLocked(ctx context.Context, batch []blobWrite) error {
	lease, err := s.ensureLeaseLocked(ctx)
	if err != nil {
		return err
	}
	ops := make([]clientv3.Op, len(batch))
	for i, w := range batch {
		if w.val == nil {
			ops[i] = clientv3.OpDelete(w.key)
		} else {
			ops[i] = clientv3.OpPut(w.key, string(w.val), clientv3.WithLease(lease))
		}
	}
	s.writeRequests.Add(1)
	_, err = s.cli.Txn(ctx).Then(ops...).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.logger.Warn("The lease of this replica's last-seen times is gone; taking a new one", "replica", s.opts.ReplicaID)
		s.leaseLostLocked(lease)
		return errLeaseLost
	}
	return err
}

// encodeDirtyLocked encodes the dirty blobs, dropping agents that no longer
// exist. touchMu is held.
func (s *EtcdStore) encodeDirtyLocked() ([]blobWrite, error) {
	var writes []blobWrite
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.own {
		sh := &s.own[i]
		if !sh.dirty {
			continue
		}
		entries := make([]lastSeenEntry, 0, len(sh.seen))
		for id, ns := range sh.seen {
			if !s.knownLocked(id) {
				delete(sh.seen, id)
				continue
			}
			entries = append(entries, lastSeenEntry{hash: blobHash(id), ns: ns})
		}
		w := blobWrite{shard: i, key: s.blobKey(i)}
		if len(entries) > 0 {
			w.val = encodeLastSeen(entries)
			if len(w.val) > etcdTxnBytes {
				return nil, fmt.Errorf("last-seen blob %s has %d bytes, more than etcd accepts in one request", w.key, len(w.val))
			}
		}
		writes = append(writes, w)
	}
	return writes, nil
}

// ensureLeaseLocked returns the lease of this replica's blobs, granting one
// and starting its keep-alive if needed. touchMu is held.
func (s *EtcdStore) ensureLeaseLocked(ctx context.Context) (clientv3.LeaseID, error) {
	if s.lease != 0 {
		return s.lease, nil
	}
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if closed {
		return 0, errors.New("store closed")
	}
	s.writeRequests.Add(1)
	resp, err := s.cli.Grant(ctx, int64(s.opts.LeaseTTL/time.Second))
	if err != nil {
		s.wg.Done()
		return 0, err
	}
	s.lease = resp.ID
	go s.keepAlive(resp.ID)
	return resp.ID, nil
}

// keepAlive renews the lease until the store closes. When the lease is
// gone (etcd unreachable for longer than its TTL), every blob is marked
// for rewriting under a new one.
func (s *EtcdStore) keepAlive(id clientv3.LeaseID) {
	defer s.wg.Done()
	ch, err := s.cli.KeepAlive(s.bg, id)
	if err == nil {
		for range ch {
		}
	}
	if s.bg.Err() != nil {
		return
	}
	s.logger.Warn("The lease of this replica's last-seen times expired; they are rewritten with the next flush", "replica", s.opts.ReplicaID, "err", err)
	s.touchMu.Lock()
	s.leaseLostLocked(id)
	s.touchMu.Unlock()
}

func (s *EtcdStore) leaseLostLocked(id clientv3.LeaseID) {
	if s.lease != id {
		return
	}
	s.lease = 0
	for i := range s.own {
		if len(s.own[i].seen) > 0 {
			s.own[i].dirty = true
		}
	}
}

// claimLease returns a lease that outlives a claim expiring at expires.
// Claims share one lease per claimLeaseWindow of expiry: a registration
// then costs no lease grant of its own, and a registration that fails
// leaves no lease behind.
func (s *EtcdStore) claimLease(ctx context.Context, expires time.Time) (clientv3.LeaseID, error) {
	end := expires.Truncate(claimLeaseWindow).Add(claimLeaseWindow)
	now := time.Now()
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	for e := range s.claimLeases {
		// A lease is used only while it has a window of life left.
		if !now.Before(e.Add(-claimLeaseWindow / 2)) {
			delete(s.claimLeases, e)
		}
	}
	if id, ok := s.claimLeases[end]; ok {
		return id, nil
	}
	ttl := int64(math.Ceil(end.Sub(now).Seconds())) + 60
	s.writeRequests.Add(1)
	resp, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, err
	}
	s.claimLeases[end] = resp.ID
	return resp.ID, nil
}

// dropClaimLease forgets a lease etcd no longer has.
func (s *EtcdStore) dropClaimLease(id clientv3.LeaseID) {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	for e, l := range s.claimLeases {
		if l == id {
			delete(s.claimLeases, e)
		}
	}
}

// Watch implements Store; see EtcdStore for what it delivers. One Watch
// runs at a time: a second concurrent call gets a closed channel. The
// channel closes when ctx ends or the store closes.
func (s *EtcdStore) Watch(ctx context.Context) <-chan Event {
	out := make(chan Event, 1024)
	s.mu.Lock()
	if s.closed || s.watcher != nil {
		s.mu.Unlock()
		s.logger.Error("etcd store: Watch called while another Watch runs or after Close")
		close(out)
		return out
	}
	q := &eventQueue{wake: make(chan struct{}, 1)}
	s.watcher = q
	start := s.resumeRev
	s.wg.Add(2)
	s.mu.Unlock()

	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.bg, cancel)
	go func() {
		defer s.wg.Done()
		defer close(out)
		s.pump(wctx, q, out)
	}()
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer stop()
		s.watchLoop(wctx, start)
	}()
	return out
}

// eventQueue decouples the watch, and writers releasing held events, from
// the consumer: pushing never blocks.
type eventQueue struct {
	mu   sync.Mutex
	evs  []Event
	wake chan struct{}
}

func (q *eventQueue) push(evs ...Event) {
	if q == nil || len(evs) == 0 {
		return
	}
	q.mu.Lock()
	q.evs = append(q.evs, evs...)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (s *EtcdStore) pump(ctx context.Context, q *eventQueue, out chan<- Event) {
	// Two buffers take turns: pushers append to one while the other is
	// sent. They never share a backing array.
	var spare []Event
	for {
		q.mu.Lock()
		batch := q.evs
		q.evs = spare
		q.mu.Unlock()
		spare = batch[:0]
		if len(batch) == 0 {
			select {
			case <-q.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		for i := range batch {
			select {
			case out <- batch[i]:
				s.events.Add(1)
			case <-ctx.Done():
				return
			}
		}
		clear(batch)
	}
}

func (s *EtcdStore) watchLoop(ctx context.Context, rev int64) {
	defer func() { s.endWatch(rev) }()
	// Without a List before, the first thing delivered is everything.
	resync := rev == 0
	bo := newEtcdBackoff(100*time.Millisecond, 5*time.Second)
	failing := false
	for ctx.Err() == nil {
		if resync {
			r, err := s.resync(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.logger.Warn("Reading the registry from etcd after the watch fell behind failed; retrying", "err", err)
				}
				bo.wait(ctx)
				continue
			}
			rev, resync = r, false
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.cli.Watch(wctx, s.opts.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
		for resp := range wch {
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				s.logger.Warn("The etcd watch fell behind compaction; reading the registry again", "revision", rev, "compact_revision", resp.CompactRevision)
				resync = true
				break
			}
			if err := resp.Err(); err != nil {
				if ctx.Err() == nil {
					s.logger.Warn("The etcd watch was interrupted; resuming", "revision", rev, "err", err)
					failing = true
				}
				break
			}
			if failing {
				s.logger.Info("The etcd watch is back", "revision", rev)
				failing = false
			}
			bo.reset()
			if resp.IsProgressNotify() {
				rev = max(rev, resp.Header.Revision)
				s.mu.Lock()
				s.progressLocked(rev)
				s.mu.Unlock()
				continue
			}
			if n := len(resp.Events); n > 0 {
				s.handleEvents(resp.Events)
				rev = max(rev, resp.Events[n-1].Kv.ModRevision)
				s.mu.Lock()
				s.progressLocked(rev)
				s.mu.Unlock()
			}
		}
		cancel()
		if ctx.Err() == nil && !resync {
			bo.wait(ctx)
		}
	}
}

// endWatch lets a later Watch resume: events still held for writes in
// flight are given back by starting before the oldest of them.
func (s *EtcdStore) endWatch(rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.mirror {
		for _, h := range e.held {
			rev = min(rev, h.rev-1)
		}
		e.held = nil
	}
	s.resumeRev = rev
	s.watcher = nil
}

// handleEvents turns one watch response into store events.
func (s *EtcdStore) handleEvents(events []*clientv3.Event) {
	type agentEv struct {
		id  string
		rev int64
		ev  Event
	}
	var agents []agentEv
	var touches []lastSeenEntry
	for _, ev := range events {
		key := string(ev.Kv.Key)
		switch {
		case strings.HasPrefix(key, s.agentsPrefix):
			id := key[len(s.agentsPrefix):]
			if ev.Type == clientv3.EventTypeDelete {
				agents = append(agents, agentEv{id, ev.Kv.ModRevision, Event{Type: EventDelete, Agent: Agent{ID: id}}})
				continue
			}
			a, err := decodeAgentRecord(id, ev.Kv.Value)
			if err != nil {
				s.logger.Error("Skipping corrupt registry record", "agent_id", protocol.Truncate(id), "err", err)
				continue
			}
			agents = append(agents, agentEv{id, ev.Kv.ModRevision, Event{Type: EventPut, Agent: a}})
		case strings.HasPrefix(key, s.lastSeenPrefix):
			if ev.Type != clientv3.EventTypePut || strings.HasPrefix(key, s.ownPrefix) {
				continue // our own blob, or one whose lease ended
			}
			if _, ok := s.parseBlobKey(key); !ok {
				continue
			}
			err := decodeLastSeen(ev.Kv.Value, func(hash uint64, ns int64) {
				touches = append(touches, lastSeenEntry{hash: hash, ns: ns})
			})
			if err != nil {
				s.logger.Error("Skipping corrupt last-seen blob", "key", key, "err", err)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range agents {
		s.deliverLocked(a.id, a.rev, a.ev)
	}
	evs := make([]Event, 0, len(touches))
	for _, t := range touches {
		s.byHash.each(t.hash, func(id string) {
			if s.knownLocked(id) {
				evs = append(evs, Event{Type: EventTouch, Agent: Agent{ID: id, LastSeen: time.Unix(0, t.ns)}})
			}
		})
	}
	s.watcher.push(evs...)
}

// pushTouchesLocked delivers the touches of agents this store knows.
func (s *EtcdStore) pushTouchesLocked(touches []Touch) {
	evs := make([]Event, 0, len(touches))
	for _, t := range touches {
		if s.knownLocked(t.ID) {
			evs = append(evs, Event{Type: EventTouch, Agent: Agent{ID: t.ID, LastSeen: t.LastSeen}})
		}
	}
	s.watcher.push(evs...)
}

// resync reads everything at a new revision and delivers what differs from
// what this store knows, then the other replicas' times. It returns the
// revision to watch from.
func (s *EtcdStore) resync(ctx context.Context) (int64, error) {
	snap, err := s.snapshot(ctx)
	if err != nil {
		return 0, err
	}
	s.resyncs.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	present := make(map[string]struct{}, len(snap.agents))
	for _, r := range snap.agents {
		a := r.agent
		present[a.ID] = struct{}{}
		if ns, ok := snap.lastSeen[a.ID]; ok && ns > a.LastSeen.UnixNano() {
			a.LastSeen = time.Unix(0, ns)
		}
		s.deliverLocked(a.ID, r.rev, Event{Type: EventPut, Agent: a})
	}
	var gone []string
	for id, e := range s.mirror {
		if _, ok := present[id]; !ok && !e.deleted && e.rev > 0 {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	for _, id := range gone {
		s.deliverLocked(id, snap.rev, Event{Type: EventDelete, Agent: Agent{ID: id}})
	}
	s.progressLocked(snap.rev)
	s.pushTouchesLocked(snap.foreign)
	return snap.rev, nil
}

// Close implements Store. Blobs that could not be written are tried once
// more. The lease is left to expire rather than revoked: the times it
// carries stay useful to replicas started later.
func (s *EtcdStore) Close() error {
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

// hashIndex maps blob hashes back to agent ids. Collisions are kept in a
// side map: they are so rare that a slice per hash would be a waste.
type hashIndex struct {
	first map[uint64]string
	more  map[uint64][]string
}

func newHashIndex(n int) hashIndex {
	return hashIndex{first: make(map[uint64]string, n), more: make(map[uint64][]string)}
}

func (x hashIndex) add(id string) {
	h := blobHash(id)
	cur, ok := x.first[h]
	switch {
	case !ok:
		x.first[h] = id
	case cur != id && !slices.Contains(x.more[h], id):
		x.more[h] = append(x.more[h], id)
	}
}

func (x hashIndex) remove(id string) {
	h := blobHash(id)
	more := x.more[h]
	if x.first[h] == id {
		if len(more) == 0 {
			delete(x.first, h)
			return
		}
		x.first[h], more = more[0], more[1:]
	} else if i := slices.Index(more, id); i >= 0 {
		more = slices.Delete(more, i, i+1)
	}
	if len(more) == 0 {
		delete(x.more, h)
	} else {
		x.more[h] = more
	}
}

// each calls fn for every id with the hash.
func (x hashIndex) each(h uint64, fn func(id string)) {
	if id, ok := x.first[h]; ok {
		fn(id)
		for _, id := range x.more[h] {
			fn(id)
		}
	}
}

// blobHash numbers an agent in last-seen blobs: FNV-1a 64 of the id, cut
// to blobHashBits.
func blobHash(id string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return h.Sum64() & (1<<blobHashBits - 1)
}

// lastSeenEntry is one agent in a last-seen blob: the hash of its id and
// when it was last seen (unix nanoseconds; blobs keep milliseconds).
type lastSeenEntry struct {
	hash uint64
	ns   int64
}

func compareLastSeen(a, b lastSeenEntry) int {
	return cmp.Or(cmp.Compare(a.hash, b.hash), cmp.Compare(a.ns, b.ns))
}

// encodeLastSeen encodes one blob: a version byte, the entry count, the
// newest time in unix milliseconds, then per entry in hash order the
// hash's distance from the previous one and the time's distance from the
// newest. Hashes take about 6 bytes, recent times 3.
func encodeLastSeen(entries []lastSeenEntry) []byte {
	slices.SortFunc(entries, compareLastSeen)
	newest := int64(0)
	for _, e := range entries {
		newest = max(newest, e.ns/int64(time.Millisecond))
	}
	b := make([]byte, 0, 16+10*len(entries))
	b = append(b, lastSeenBlobVersion)
	b = binary.AppendUvarint(b, uint64(len(entries)))
	b = binary.AppendUvarint(b, uint64(newest))
	prev := uint64(0)
	for _, e := range entries {
		b = binary.AppendUvarint(b, e.hash-prev)
		b = binary.AppendUvarint(b, uint64(newest-max(e.ns, 0)/int64(time.Millisecond)))
		prev = e.hash
	}
	return b
}

// decodeLastSeen calls fn for every entry of a blob. It rejects, rather
// than guesses at, anything malformed: blobs come from the network.
func decodeLastSeen(b []byte, fn func(hash uint64, ns int64)) error {
	if len(b) == 0 || b[0] != lastSeenBlobVersion {
		return errors.New("unknown last-seen blob version")
	}
	b = b[1:]
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return errors.New("bad entry count")
	}
	b = b[n:]
	// Every entry takes at least 2 bytes.
	if count > uint64(len(b))/2 {
		return fmt.Errorf("entry count %d does not fit the blob", count)
	}
	newest, n := binary.Uvarint(b)
	if n <= 0 || newest > math.MaxInt64/uint64(time.Millisecond) {
		return errors.New("bad newest time")
	}
	b = b[n:]
	const maxHash = 1<<blobHashBits - 1
	hash := uint64(0)
	for i := uint64(0); i < count; i++ {
		d, n := binary.Uvarint(b)
		if n <= 0 || d > maxHash-hash {
			return fmt.Errorf("entry %d: bad hash", i)
		}
		b = b[n:]
		age, n := binary.Uvarint(b)
		if n <= 0 || age > newest {
			return fmt.Errorf("entry %d: bad time", i)
		}
		b = b[n:]
		hash += d
		fn(hash, int64(newest-age)*int64(time.Millisecond))
	}
	if len(b) != 0 {
		return errors.New("trailing bytes")
	}
	return nil
}

// etcdBackoff is a capped exponential backoff with jitter.
type etcdBackoff struct {
	min, max, cur time.Duration
	full          bool // jitter over the whole interval
}

func newEtcdBackoff(minWait, maxWait time.Duration) *etcdBackoff {
	return &etcdBackoff{min: minWait, max: maxWait, cur: minWait}
}

func (b *etcdBackoff) reset() { b.cur = b.min }

// wait sleeps for the next interval; it returns false if ctx ended first.
func (b *etcdBackoff) wait(ctx context.Context) bool {
	var r [2]byte
	_, _ = rand.Read(r[:])
	// Up to a quarter of jitter keeps replicas from retrying in step;
	// writers that collided need to spread over the whole interval.
	spread := b.cur / 4
	if b.full {
		spread = b.cur
	}
	d := b.cur - spread + time.Duration(binary.BigEndian.Uint16(r[:]))*spread/65536
	b.cur = min(2*b.cur, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
