// Package blobsync is a plugin for libp2p object-sync servers that replicates
// blobs: a Node stores blobs, serves them to peers over /blobsync/blob/1.0.0
// and fetches them, verified and resumable, from peers.
//
// An embedding server hands New its host.Host, a go-datastore and a directory;
// the peer command (cmd/peer) runs a complete node.
package blobsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Ref is a BlobRef: the content address of a blob.
type Ref = datastore.Ref

// ParseRef parses a BlobRef's string form.
func ParseRef(s string) (Ref, error) { return datastore.ParseRef(s) }

// Errors returned by Node; test them with errors.Is.
var (
	// ErrNoLocation: a fetch had no peer to try.
	ErrNoLocation = errors.New("no known location for the blob")
	// ErrNotFound: the blob is not held here.
	ErrNotFound = datastore.ErrNotFound
)

// Node is one blobsync peer: its blob store, metadata and blob protocol.
type Node struct {
	h      host.Host
	blobs  *datastore.BlobStore
	meta   *datastore.MetaStore
	client *protocol.Client
	server *protocol.Server
	cfg    config
}

type config struct {
	log       *slog.Logger
	now       func() time.Time
	protoOpts []protocol.Option
}

// Option configures a Node.
type Option func(*config)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithClock sets the source of time (default time.Now).
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithProtocolOptions passes options to the blob protocol's client and server.
func WithProtocolOptions(opts ...protocol.Option) Option {
	return func(c *config) { c.protoOpts = append(c.protoOpts, opts...) }
}

// New starts a Node on h, keeping metadata in d and blob content under dir.
// The Node uses but does not own h and d: Close leaves them open.
func New(h host.Host, d ds.Batching, dir string, opts ...Option) (*Node, error) {
	cfg := config{log: slog.Default(), now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.log == nil || cfg.now == nil {
		return nil, errors.New("blobsync: nil logger or clock")
	}
	blobs, err := datastore.OpenBlobStore(dir)
	if err != nil {
		return nil, err
	}
	popts := append([]protocol.Option{protocol.Logger(cfg.log)}, cfg.protoOpts...)
	client, err := protocol.NewClient(h, popts...)
	if err != nil {
		return nil, err
	}
	n := &Node{h: h, blobs: blobs, meta: datastore.NewMetaStore(d), client: client, cfg: cfg}
	n.server, err = protocol.NewServer(h, blobs, policy{n}, popts...)
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Close stops serving and waits for the transfers being served to end. It
// does not close the host or the datastore.
func (n *Node) Close() error { return n.server.Close() }

// Host returns the node's libp2p host.
func (n *Node) Host() host.Host { return n.h }

// PutOptions say how a blob is shared.
type PutOptions struct {
	// Public serves the blob to anyone who asks by its BlobRef. Once public, a
	// blob stays public when put again.
	Public bool
}

// Put stores the bytes of r and returns their BlobRef and size.
func (n *Node) Put(ctx context.Context, r io.Reader, opts PutOptions) (Ref, int64, error) {
	ref, size, err := n.blobs.Put(r)
	if err != nil {
		return Ref{}, 0, err
	}
	if err := n.recordHeld(ctx, ref, size, opts.Public); err != nil {
		return Ref{}, 0, err
	}
	return ref, size, nil
}

func (n *Node) recordHeld(ctx context.Context, ref Ref, size int64, public bool) error {
	_, err := n.meta.UpdateBlobMeta(ctx, ref, func(m *datastore.BlobMeta) bool {
		before := *m
		m.Size = size
		m.Public = m.Public || public
		if m.Created.IsZero() {
			m.Created = n.cfg.now()
		}
		return *m != before
	})
	return err
}

// Open opens a held blob for reading; the error wraps ErrNotFound if it is not held.
func (n *Node) Open(ref Ref) (*os.File, int64, error) { return n.blobs.Open(ref) }

// Has reports whether the blob is held here, and its size.
func (n *Node) Has(ref Ref) (int64, bool, error) { return n.blobs.Has(ref) }

// BlobInfo describes a held blob.
type BlobInfo struct {
	Ref     Ref       `json:"ref"`
	Size    int64     `json:"size"`
	Public  bool      `json:"public"`
	Created time.Time `json:"created"`
}

// List returns the blobs held here.
func (n *Node) List(ctx context.Context) ([]BlobInfo, error) {
	held, err := n.blobs.List()
	if err != nil {
		return nil, err
	}
	out := make([]BlobInfo, 0, len(held))
	for _, b := range held {
		meta, _, err := n.meta.BlobMeta(ctx, b.Ref)
		if err != nil {
			return nil, err
		}
		out = append(out, BlobInfo{Ref: b.Ref, Size: b.Size, Public: meta.Public, Created: meta.Created})
	}
	return out, nil
}

// FetchOptions say where to fetch from and how to report progress.
type FetchOptions struct {
	// From lists peers to try first, in order; their addresses are added to
	// the peerstore. The blob's signpost locations are tried after them.
	From     []peer.AddrInfo
	Progress protocol.Progress
}

// Fetch makes the blob held here, fetching it if needed: from opts.From, then
// from the locations in its signpost. It returns the blob's size. The blob is
// verified against ref before it becomes visible; a partial fetch resumes.
func (n *Node) Fetch(ctx context.Context, ref Ref, opts FetchOptions) (int64, error) {
	if size, ok, err := n.blobs.Has(ref); err != nil || ok {
		return size, err
	}
	candidates, err := n.candidates(ctx, ref, opts.From)
	if err != nil {
		return 0, err
	}
	if len(candidates) == 0 {
		return 0, fmt.Errorf("blob %s: %w", ref, ErrNoLocation)
	}
	var errs []error
	for _, p := range candidates {
		size, err := n.client.Fetch(ctx, p, ref, n.blobs, opts.Progress)
		if err == nil {
			return size, n.recordHeld(ctx, ref, size, false)
		}
		if ctx.Err() != nil {
			return 0, err
		}
		n.cfg.log.Debug("fetch attempt failed", "ref", ref, "peer", p, "err", err)
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return 0, errs[0]
	}
	return 0, fmt.Errorf("blob %s: every location failed: %w", ref, errors.Join(errs...))
}

// candidates lists the peers to try for ref: from first, then the signpost's
// locations, without duplicates or this peer.
func (n *Node) candidates(ctx context.Context, ref Ref, from []peer.AddrInfo) ([]peer.ID, error) {
	var out []peer.ID
	seen := map[peer.ID]bool{n.h.ID(): true}
	add := func(p peer.ID) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, ai := range from {
		n.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, addrTTL)
		add(ai.ID)
	}
	sp, _, err := n.meta.Signpost(ctx, ref)
	if err != nil {
		return nil, err
	}
	for _, l := range sp.Locations {
		add(l.Peer)
	}
	return out, nil
}

// addrTTL is how long addresses given to Fetch stay in the peerstore.
const addrTTL = time.Hour

// Stats counts what this node holds and has moved.
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

// Partials returns the partial fetch files kept for resume.
func (n *Node) Partials() ([]datastore.BlobInfo, error) { return n.blobs.Partials() }
