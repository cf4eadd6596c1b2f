// Package blobsync is a plugin for libp2p object-sync servers that replicates
// blobs: a Node stores blobs, serves them to the members of its syncgroups
// over /blobsync/blob/1.0.0, exchanges BlobRef announcements with them, and
// fetches blobs, verified and resumable, from wherever its signposts point.
//
// An embedding server hands New its host.Host, a go-datastore and a
// directory, and calls ProcessBlobRefs when its own sync delivers objects that
// carry BlobRefs; the peer command (cmd/peer) runs a complete node.
package blobsync

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/fetcher"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/syncgroup"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Ref is a BlobRef: the content address of a blob.
type Ref = datastore.Ref

// ParseRef parses a BlobRef's string form.
func ParseRef(s string) (Ref, error) { return datastore.ParseRef(s) }

// Errors returned by Node; test them with errors.Is.
var (
	// ErrNoLocation: a fetch had no peer to try, or none had the blob.
	ErrNoLocation = errors.New("no known location has the blob")
	// ErrNotFound: the blob is not held here.
	ErrNotFound = datastore.ErrNotFound
	// ErrUnknownSyncgroup: this peer is not a member of the syncgroup.
	ErrUnknownSyncgroup = protocol.ErrUnknownSyncgroup
	// ErrClosed: the Node is closed.
	ErrClosed = errors.New("blobsync node closed")
	// ErrLocal: this peer's own storage failed during a fetch (a full disk,
	// say); no other location is tried, as none would fare better.
	ErrLocal = protocol.ErrLocal
)

// Node is one blobsync peer: its blob store, metadata, syncgroups and protocols.
type Node struct {
	h        host.Host
	blobs    *datastore.BlobStore
	meta     *datastore.MetaStore
	client   *protocol.Client
	server   *protocol.Server
	sgServer *protocol.SgServer
	groups   *syncgroup.Manager
	notifee  *network.NotifyBundle
	cfg      config

	fetcher     *fetcher.Fetcher
	fetchServer *fetcher.Server
	metrics     *metrics

	flightsMu sync.Mutex
	flights   map[Ref]*flight // transfers under way, shared by their Fetch calls
	tails     chan struct{}   // a token per flight finishing behind its held caller

	gcMu        sync.Mutex    // one collection at a time
	budgetCheck chan struct{} // capacity 1: the storage budget may be exceeded
	prov        providing

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type config struct {
	log             *slog.Logger
	now             func() time.Time
	protoOpts       []protocol.Option
	fetchOpts       []fetcher.Option
	serverOpts      []fetcher.ServerOption
	syncInterval    time.Duration
	storageBudget   int64
	discovery       Discovery
	provideInterval time.Duration
}

// Option configures a Node.
type Option func(*config)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithClock sets the source of time (default time.Now).
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithProtocolOptions passes options to the protocols' clients and servers.
func WithProtocolOptions(opts ...protocol.Option) Option {
	return func(c *config) { c.protoOpts = append(c.protoOpts, opts...) }
}

// WithFetcherOptions passes options to the server blob fetcher (concurrency,
// clock) and to its server loop (scan delays).
func WithFetcherOptions(opts []fetcher.Option, serverOpts ...fetcher.ServerOption) Option {
	return func(c *config) {
		c.fetchOpts = append(c.fetchOpts, opts...)
		c.serverOpts = append(c.serverOpts, serverOpts...)
	}
}

// WithStorageBudget makes the node drop copies it does not own (see GC),
// least recently used first, whenever the blobs it holds exceed bytes. Blobs
// it owns or pinned are never dropped, budget or not. Default: no budget.
func WithStorageBudget(bytes int64) Option { return func(c *config) { c.storageBudget = bytes } }

// WithSyncInterval sets how often every syncgroup is pulled from its members
// as a safety net behind pushes and reconnects (default DefaultSyncInterval).
func WithSyncInterval(d time.Duration) Option { return func(c *config) { c.syncInterval = d } }

// DefaultSyncInterval is the default period of the anti-entropy pull.
const DefaultSyncInterval = time.Minute

// memberAddrTTL is how long a member's announced addresses stay in the peerstore.
const memberAddrTTL = 24 * time.Hour

// New starts a Node on h, keeping metadata in d and blob content under dir.
// The Node uses but does not own h and d: Close leaves them open.
func New(h host.Host, d ds.Batching, dir string, opts ...Option) (*Node, error) {
	cfg := config{log: slog.Default(), now: time.Now, syncInterval: DefaultSyncInterval, provideInterval: DefaultProvideInterval}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.log == nil || cfg.now == nil || cfg.syncInterval <= 0 || cfg.provideInterval <= 0 {
		return nil, errors.New("blobsync: nil logger or clock, or a sync or provide interval that is not positive")
	}
	blobs, err := datastore.OpenBlobStore(dir)
	if err != nil {
		return nil, err
	}
	popts := append([]protocol.Option{protocol.Logger(cfg.log)}, cfg.protoOpts...)
	n := &Node{h: h, blobs: blobs, meta: datastore.NewMetaStore(d), cfg: cfg, metrics: newMetrics()}
	if n.client, err = protocol.NewClient(h, popts...); err != nil {
		return nil, err
	}
	sgClient, err := protocol.NewSgClient(h, popts...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.ctx, n.cancel, n.flights, n.budgetCheck = ctx, cancel, map[Ref]*flight{}, make(chan struct{}, 1)
	n.tails = make(chan struct{}, maxTails)
	n.prov.queue = make(chan cid.Cid, 4096)
	n.groups, err = syncgroup.New(ctx, n.meta, sgClient, syncgroup.Config{
		Self:  h.ID(),
		Addrs: h.Addrs,
		Serve: func(id string) { n.sgServer.Serve(id) },
		Learned: func(m datastore.Member) {
			h.Peerstore().AddAddrs(m.Peer, m.Addrs, memberAddrTTL)
		},
		Changed: func(_ string, refs []datastore.Ref) { n.fetchServer.SignpostsChanged(refs) },
		Now:     cfg.now,
		Log:     cfg.log,
	})
	if err != nil {
		cancel()
		return nil, err
	}
	if n.sgServer, err = protocol.NewSgServer(h, n.groups, popts...); err != nil {
		cancel()
		n.groups.Close()
		return nil, err
	}
	if n.server, err = protocol.NewServer(h, blobs, policy{n}, popts...); err != nil {
		cancel()
		n.groups.Close()
		n.sgServer.Close()
		return nil, err
	}
	fopts := append([]fetcher.Option{fetcher.WithLogger(cfg.log), fetcher.WithObserver(n.metrics.observe)}, cfg.fetchOpts...)
	if n.fetcher, err = fetcher.New(n.fetchInBackground, fetchSource{n}, fopts...); err == nil {
		sopts := append([]fetcher.ServerOption{fetcher.ServerLogger(cfg.log)}, cfg.serverOpts...)
		if n.fetchServer, err = fetcher.NewServer(n.fetcher, fetchSource{n}, sopts...); err != nil {
			n.fetcher.Close()
		}
	}
	if err != nil {
		cancel()
		errors.Join(n.client.Close(), n.server.Close(), n.sgServer.Close(), n.groups.Close())
		return nil, err
	}
	n.notifee = &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		n.groups.PeerConnected(c.RemotePeer())
		n.fetchServer.PeerConnected(string(c.RemotePeer()))
	}}
	h.Network().Notify(n.notifee)
	if err := n.groups.Start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	n.wg.Go(func() { n.syncLoop(ctx) })
	n.wg.Go(func() { n.budgetLoop(ctx) })
	n.wg.Go(func() { n.startHeld(ctx) })
	if cfg.discovery != nil {
		n.wg.Go(func() { n.provideLoop(ctx) })
	}
	n.checkBudget()
	return n, nil
}

// syncLoop pulls every syncgroup from its members every syncInterval.
func (n *Node) syncLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.syncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.groups.SyncAll()
		}
	}
}

// Close stops serving, syncing and fetching, and waits for everything the
// Node started to end. It does not close the host or the datastore.
func (n *Node) Close() error {
	n.h.Network().StopNotify(n.notifee)
	// The fetch loop first (no new fetches), then the fetches in flight...
	err := errors.Join(n.fetchServer.Close(), n.fetcher.Close())
	// ...then every transfer and loop of the node: cancelled under flightsMu,
	// so no transfer starts once Wait has begun...
	n.flightsMu.Lock()
	n.cancel()
	n.flightsMu.Unlock()
	n.wg.Wait()
	// ...then what they used.
	return errors.Join(err, n.client.Close(), n.server.Close(), n.sgServer.Close(), n.groups.Close())
}

// Host returns the node's libp2p host.
func (n *Node) Host() host.Host { return n.h }

// Stats counts what this node has moved.
type Stats struct {
	BytesSent     int64 `json:"bytes_sent"`
	BytesReceived int64 `json:"bytes_received"`
	BlobsServed   int64 `json:"blobs_served"`
	BlobsFetched  int64 `json:"blobs_fetched"`
}

// Stats returns the transfer counters since New.
func (n *Node) Stats() Stats {
	s, c := n.server.Stats(), n.client.Stats()
	return Stats{BytesSent: s.BytesSent, BytesReceived: c.BytesReceived, BlobsServed: s.BlobsServed, BlobsFetched: c.BlobsFetched}
}

// addAddrs puts addresses a caller gave (--from, --via) into the peerstore.
func (n *Node) addAddrs(ai peer.AddrInfo) {
	n.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, callerAddrTTL)
}

// callerAddrTTL is how long addresses given to Fetch or JoinSyncgroup stay.
const callerAddrTTL = time.Hour
