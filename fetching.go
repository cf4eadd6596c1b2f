package blobsync

import (
	"context"
	"slices"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/fetcher"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The server blob fetcher's view of this node: which blobs this peer, as a
// server of their syncgroups, should fetch (fetcher.Source), and where their
// fetch attempts are kept (fetcher.Store).
type fetchSource struct{ n *Node }

var (
	_ fetcher.Source = fetchSource{}
	_ fetcher.Store  = fetchSource{}
)

// servedGroups returns the syncgroups in which this peer is a server.
func (s fetchSource) servedGroups() []string {
	var out []string
	for _, g := range s.n.groups.Groups() {
		if g.MyRole == RoleServer {
			out = append(out, g.Spec.ID)
		}
	}
	return out
}

func (s fetchSource) ScanWanted(ctx context.Context, fn func(datastore.Ref, uint32)) error {
	served := s.servedGroups()
	if len(served) == 0 {
		return nil
	}
	return s.n.meta.ForEachSignpost(ctx, func(ref datastore.Ref, sp datastore.Signpost) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !slices.ContainsFunc(sp.SgIDs, func(sg string) bool { return slices.Contains(served, sg) }) {
			return nil
		}
		if _, held, err := s.n.blobs.Has(ref); err != nil || held {
			return err
		}
		fn(ref, sp.FetchAttempts)
		return nil
	})
}

func (s fetchSource) Wanted(ctx context.Context, ref datastore.Ref) (bool, error) {
	sp, _, err := s.n.meta.Signpost(ctx, ref)
	if err != nil {
		return false, err
	}
	server := slices.ContainsFunc(sp.SgIDs, func(sg string) bool {
		role, ok := s.n.groups.MyRole(sg)
		return ok && role == RoleServer
	})
	if !server {
		return false, nil
	}
	_, held, err := s.n.blobs.Has(ref)
	return !held, err
}

func (s fetchSource) ListsPeer(ctx context.Context, ref datastore.Ref, p string) (bool, error) {
	sp, _, err := s.n.meta.Signpost(ctx, ref)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(sp.Locations, func(l datastore.Location) bool { return l.Peer == peer.ID(p) }), nil
}

func (s fetchSource) FetchAttempts(ctx context.Context, ref datastore.Ref) (uint32, error) {
	sp, _, err := s.n.meta.Signpost(ctx, ref)
	return sp.FetchAttempts, err
}

func (s fetchSource) SetFetchAttempts(ctx context.Context, ref datastore.Ref, n uint32) error {
	return s.n.meta.SetFetchAttempts(ctx, ref, n)
}

// fetchInBackground is the server fetcher's fetch: locate through the
// signpost, resume any partial file, verify, finalize. It returns once the
// blob is verified, its install, acknowledgement and record following behind
// (see Node.fetch). A blob this peer no longer serves a syncgroup of (it left, or
// rejoined in another role) is dropped from the queue.
func (n *Node) fetchInBackground(ctx context.Context, ref datastore.Ref) error {
	wanted, err := fetchSource{n}.Wanted(ctx, ref)
	if err != nil {
		return err
	}
	if !wanted {
		if _, held, _ := n.blobs.Has(ref); held {
			return nil // held already, fetched some other way
		}
		return fetcher.ErrUnwanted
	}
	_, err = n.fetch(ctx, ref, FetchOptions{}, true)
	return err
}

// FetchQueue describes the server fetcher's queue: how many blobs are pending
// and in flight, and up to limit of them (in flight first, then the soonest).
type FetchQueue struct {
	Pending  int                 `json:"pending"`
	InFlight int                 `json:"in_flight"`
	Blobs    []fetcher.BlobState `json:"blobs"`
	LastScan fetcher.ScanStats   `json:"last_scan"`
}

// FetchQueue returns the state of the server fetcher.
func (n *Node) FetchQueue(limit int) FetchQueue {
	pending, inFlight, blobs := n.fetcher.Snapshot(limit)
	return FetchQueue{Pending: pending, InFlight: inFlight, Blobs: blobs, LastScan: n.fetchServer.LastScan()}
}
