package syncgroup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// network connects Managers in-process: a call from one to another runs the
// target's handler directly. Peers can be taken offline.
type network struct {
	mu       sync.Mutex
	managers map[peer.ID]*Manager
	offline  map[peer.ID]bool
	addrs    map[peer.ID]ma.Multiaddr // where each peer "listens"
	calls    map[string]int           // "announce", "pull", "join"
	batches  []int                    // sizes of announces that carried blob entries
	// afterPull, if set, runs when a pull by from has read to's log and
	// before the entries reach from.
	afterPull func(from, to peer.ID)
}

var errOffline = errors.New("peer offline")

func newNetwork() *network {
	return &network{managers: map[peer.ID]*Manager{}, offline: map[peer.ID]bool{}, addrs: map[peer.ID]ma.Multiaddr{}, calls: map[string]int{}}
}

func (n *network) target(op string, from, to peer.ID) (*Manager, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls[op]++
	if n.offline[to] || n.offline[from] {
		return nil, errOffline
	}
	m, ok := n.managers[to]
	if !ok {
		return nil, fmt.Errorf("no peer %s", to)
	}
	return m, nil
}

func (n *network) setOffline(p peer.ID, off bool) {
	n.mu.Lock()
	n.offline[p] = off
	n.mu.Unlock()
}

// transport is one peer's view of the network.
type transport struct {
	n    *network
	self peer.ID
}

func (t transport) Join(ctx context.Context, p peer.ID, id string, role datastore.Role, addrs []ma.Multiaddr) (datastore.Spec, error) {
	m, err := t.n.target("join", t.self, p)
	if err != nil {
		return datastore.Spec{}, err
	}
	return m.HandleJoin(ctx, id, t.self, role, addrs)
}

func (t transport) Pull(ctx context.Context, p peer.ID, id string, since map[peer.ID]uint64, limit int) ([]datastore.LogEntry, bool, error) {
	m, err := t.n.target("pull", t.self, p)
	if err != nil {
		return nil, false, err
	}
	entries, more, err := m.HandlePull(ctx, id, t.self, since, limit)
	t.n.mu.Lock()
	after := t.n.afterPull
	t.n.mu.Unlock()
	if after != nil {
		after(t.self, p)
	}
	return entries, more, err
}

func (t transport) Announce(ctx context.Context, p peer.ID, id string, entries []datastore.LogEntry) (int, error) {
	if len(entries) > protocol.MaxAnnounceEntries {
		return 0, fmt.Errorf("%w: %d entries", protocol.ErrBadRequest, len(entries)) // as protocol.SgClient does
	}
	m, err := t.n.target("announce", t.self, p)
	if err != nil {
		return 0, err
	}
	if len(entries) > 0 && entries[0].Blob != nil {
		t.n.mu.Lock()
		t.n.batches = append(t.n.batches, len(entries))
		t.n.mu.Unlock()
	}
	return m.HandleAnnounce(ctx, id, t.self, entries)
}

// node is one peer: its Manager over an in-memory datastore.
type node struct {
	id      peer.ID
	m       *Manager
	meta    *datastore.MetaStore
	served  map[string]bool
	changed map[datastore.Ref]int
	mu      sync.Mutex
}

func newID(t testing.TB) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (n *network) add(t testing.TB) *node {
	t.Helper()
	return n.addWith(t, newID(t), datastore.NewMetaStore(dssync.MutexWrap(ds.NewMapDatastore())))
}

// addWith starts a Manager for id over meta (a restart, if meta is reused).
func (n *network) addWith(t testing.TB, id peer.ID, meta *datastore.MetaStore) *node {
	t.Helper()
	nd := &node{id: id, meta: meta, served: map[string]bool{}, changed: map[datastore.Ref]int{}}
	n.mu.Lock()
	if _, ok := n.addrs[id]; !ok {
		n.addrs[id] = ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", 4000+len(n.addrs)))
	}
	n.mu.Unlock()
	m, err := New(t.Context(), meta, transport{n: n, self: id}, Config{
		Self: id,
		Addrs: func() []ma.Multiaddr {
			n.mu.Lock()
			defer n.mu.Unlock()
			return []ma.Multiaddr{n.addrs[id]}
		},
		Serve: func(sg string) { nd.mu.Lock(); nd.served[sg] = true; nd.mu.Unlock() },
		Changed: func(_ string, refs []datastore.Ref) {
			nd.mu.Lock()
			for _, r := range refs {
				nd.changed[r]++
			}
			nd.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	nd.m = m
	n.mu.Lock()
	n.managers[id] = m
	n.mu.Unlock()
	t.Cleanup(func() { m.Close() })
	return nd
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (nd *node) signpost(t *testing.T, ref datastore.Ref) datastore.Signpost {
	t.Helper()
	sp, _, err := nd.meta.Signpost(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}
