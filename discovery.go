package blobsync

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/blobsync/blobsync/p2p"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Discovery finds peers and content; p2p.DHT is one. A Node without it
// locates blobs only through signposts and joins syncgroups only through a
// member it is given.
type Discovery interface {
	Provide(ctx context.Context, key cid.Cid) error
	FindProviders(ctx context.Context, key cid.Cid, limit int) ([]peer.AddrInfo, error)
}

// WithDiscovery sets the Discovery: the node then provides its syncgroups'
// rendezvous keys and, where it is a server, the blobs it holds; joins
// syncgroups found by ID alone; and asks providers for blobs no signpost
// location has. Records are provided again every interval (default
// DefaultProvideInterval; DHT records expire after 48 h).
func WithDiscovery(d Discovery, interval time.Duration) Option {
	return func(c *config) { c.discovery, c.provideInterval = d, interval }
}

// Discovery defaults.
const (
	DefaultProvideInterval = 12 * time.Hour
	providerLimit          = 8                // providers asked for, per search
	providerTimeout        = 10 * time.Second // per search
	provideTimeout         = 30 * time.Second // per record
)

// ErrNoMember: no member of the syncgroup could be found or joined through.
var ErrNoMember = errors.New("no reachable member of the syncgroup found through the DHT")

// providing is the node's provider-record state.
type providing struct {
	queue    chan cid.Cid // keys to provide soon; full means the next pass gets them
	provided atomic.Int64
	failed   atomic.Int64
}

// provide queues key for providing, if there is a Discovery. It never blocks.
func (n *Node) provide(key cid.Cid) {
	if n.cfg.discovery == nil {
		return
	}
	select {
	case n.prov.queue <- key:
	default:
	}
}

// provideLoop provides queued keys, and every key this node should provide
// every provideInterval; at start, the syncgroups' (startHeld queues the
// blobs').
func (n *Node) provideLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.provideInterval)
	defer t.Stop()
	n.provideGroups()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.provideAll(ctx)
		case key := <-n.prov.queue:
			pctx, cancel := context.WithTimeout(ctx, provideTimeout)
			err := n.cfg.discovery.Provide(pctx, key)
			cancel()
			if err != nil {
				n.prov.failed.Add(1)
				n.cfg.log.Debug("dht: provide failed", "key", key, "err", err)
				continue
			}
			n.prov.provided.Add(1)
		}
	}
}

// provideAll queues the rendezvous keys of every syncgroup and the blobs held
// here in syncgroups this node serves.
func (n *Node) provideAll(ctx context.Context) {
	n.provideGroups()
	held, err := n.blobs.List()
	if err != nil {
		n.cfg.log.Warn("dht: listing blobs to provide", "err", err)
		return
	}
	for _, b := range held {
		if ctx.Err() != nil {
			return
		}
		n.provideIfServed(ctx, b.Ref)
	}
}

// provideGroups queues the rendezvous key of every syncgroup.
func (n *Node) provideGroups() {
	for _, g := range n.groups.Groups() {
		if key, err := p2p.RendezvousKey(g.Spec.ID); err == nil {
			n.provide(key)
		}
	}
}

// provideIfServed queues ref for providing if there is a Discovery and this
// node serves a syncgroup of ref. Without a Discovery it reads nothing.
func (n *Node) provideIfServed(ctx context.Context, ref Ref) {
	if n.cfg.discovery != nil && n.serves(ctx, ref) {
		n.provide(ref.CID())
	}
}

// serves reports whether this node is a server of a syncgroup ref was
// learned in: then it provides ref.
func (n *Node) serves(ctx context.Context, ref Ref) bool {
	sp, _, err := n.meta.Signpost(ctx, ref)
	return err == nil && slices.ContainsFunc(sp.SgIDs, func(sg string) bool {
		role, ok := n.groups.MyRole(sg)
		return ok && role == RoleServer
	})
}

// findProviders asks the Discovery for up to providerLimit providers of key,
// for at most providerTimeout.
func (n *Node) findProviders(ctx context.Context, key cid.Cid) ([]peer.AddrInfo, error) {
	if n.cfg.discovery == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, providerTimeout)
	defer cancel()
	provs, err := n.cfg.discovery.FindProviders(ctx, key, providerLimit)
	return slices.DeleteFunc(provs, func(ai peer.AddrInfo) bool { return ai.ID == n.h.ID() }), err
}

// joinByRendezvous joins syncgroup id through a member found in the DHT.
func (n *Node) joinByRendezvous(ctx context.Context, id string, role Role) (Syncgroup, error) {
	if n.cfg.discovery == nil {
		return Syncgroup{}, fmt.Errorf("syncgroup %s: no member given and no DHT to find one", id)
	}
	key, err := p2p.RendezvousKey(id)
	if err != nil {
		return Syncgroup{}, err
	}
	members, err := n.findProviders(ctx, key)
	if len(members) == 0 {
		if err != nil {
			return Syncgroup{}, fmt.Errorf("syncgroup %s: %w: %v", id, ErrNoMember, err)
		}
		return Syncgroup{}, fmt.Errorf("syncgroup %s: %w", id, ErrNoMember)
	}
	var errs []error
	for _, m := range members {
		n.addAddrs(m)
		g, err := n.groups.Join(ctx, id, m.ID, role)
		if err == nil {
			return g, nil
		}
		errs = append(errs, err)
	}
	return Syncgroup{}, fmt.Errorf("syncgroup %s: %w: %w", id, ErrNoMember, errors.Join(errs...))
}

// DiscoveryStats counts provider records published.
type DiscoveryStats struct {
	Enabled  bool  `json:"enabled"`
	Provided int64 `json:"provided"`
	Failed   int64 `json:"failed"`
}

// DiscoveryStats returns the provider-record counters since New.
func (n *Node) DiscoveryStats() DiscoveryStats {
	return DiscoveryStats{Enabled: n.cfg.discovery != nil, Provided: n.prov.provided.Load(), Failed: n.prov.failed.Load()}
}
