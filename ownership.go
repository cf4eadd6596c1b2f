package blobsync

import (
	"context"
	"maps"
	"slices"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Ownership shares (DESIGN §7). The peer that puts a blob into a syncgroup
// holds datastore.InitialShares for it there. A peer offers its shares to a
// fetcher of higher priority — all of them to a server, one to a normal peer —
// and the fetcher, once the blob is verified, says what it took. The sender
// is the authority: it subtracts atomically and grants at most what it has,
// and the fetcher adds only what was granted, so shares are never created by
// a transfer, even when two servers fetch one blob at once.

// rank orders roles by priority: server > normal > leaf.
func rank(r Role) int {
	switch r {
	case RoleServer:
		return 3
	case RoleNormal:
		return 2
	}
	return 1
}

// distance is this peer's distance to a server of syncgroup sg: 0 if it is
// one, 1 if connected to one, else 2.
func (n *Node) distance(sg string) uint32 {
	if role, _ := n.groups.MyRole(sg); role == RoleServer {
		return 0
	}
	g, err := n.groups.Group(sg)
	if err != nil {
		return 2
	}
	for _, m := range g.Members {
		if m.Role == RoleServer && m.Peer != n.h.ID() && n.h.Network().Connectedness(m.Peer) == network.Connected {
			return 1
		}
	}
	return 2
}

// distanceIn is a caller's stated distance to a server of sg: 2 (neither a
// server nor connected to one) if it stated none.
func distanceIn(distance map[string]uint32, sg string) uint32 {
	if d, ok := distance[sg]; ok {
		return d
	}
	return 2
}

// distances returns this peer's distance to a server in each of sgs.
func (n *Node) distances(sgs []string) map[string]uint32 {
	out := make(map[string]uint32, len(sgs))
	for _, sg := range sgs {
		if _, ok := n.groups.MyRole(sg); ok {
			out[sg] = n.distance(sg)
		}
	}
	return out
}

// offerFor returns how many of have shares in sg this peer gives caller, a
// member with role at distance callerDist: none unless the caller outranks
// this peer (role, then nearness to a server); all to a server, one otherwise.
func (n *Node) offerFor(sg string, have int32, callerRole Role, callerDist uint32) int32 {
	myRole, _ := n.groups.MyRole(sg)
	myDist := n.distance(sg)
	if callerRole == RoleServer {
		callerDist = 0
	}
	higher := rank(callerRole) > rank(myRole) || (rank(callerRole) == rank(myRole) && callerDist < myDist)
	switch {
	case have <= 0 || !higher:
		return 0
	case callerRole == RoleServer:
		return have
	}
	return 1
}

func (p policy) Offer(ctx context.Context, caller peer.ID, ref datastore.Ref, distance map[string]uint32) (map[string]int32, error) {
	meta, _, err := p.n.meta.BlobMeta(ctx, ref)
	if err != nil {
		return nil, err
	}
	var out map[string]int32
	for sg, have := range meta.Shares {
		role, member := p.n.groups.Role(sg, caller)
		if !member {
			continue
		}
		if give := p.n.offerFor(sg, have, role, distanceIn(distance, sg)); give > 0 {
			if out == nil {
				out = map[string]int32{}
			}
			out[sg] = give
		}
	}
	return out, nil
}

// Accepted grants what caller took, within what this peer would offer it now
// (its role; the distance it gave when it fetched) and what it has, and
// records caller as a holder. The Server calls it only for a caller that
// completed a transfer of ref, once per transfer.
//
// The grant is not waited on to reach the disk: that would put an fsync on
// every fetch's path, and losing it in a crash is harmless. This peer then
// has its shares back (an extra owner, never a missing one) and no record of
// the holder, so gc keeps its copy; the caller installed the blob durably
// before acknowledging it, and records what it was granted. The next durable
// write here (a put, a syncgroup entry) takes the grant along.
func (p policy) Accepted(ctx context.Context, caller peer.ID, ref datastore.Ref, taken map[string]int32, distance map[string]uint32) (map[string]int32, bool, error) {
	sp, _, err := p.n.meta.Signpost(ctx, ref)
	if err != nil {
		return nil, false, err
	}
	// Only a member of one of the blob's syncgroups counts as a holder: gc
	// relies on holders, and anyone may fetch a public blob.
	member := slices.ContainsFunc(sp.SgIDs, func(sg string) bool { return p.n.groups.IsMember(sg, caller) })
	granted := map[string]int32{}
	meta, err := p.n.meta.UpdateBlobMetaUnsynced(ctx, ref, func(m *datastore.BlobMeta) bool {
		for sg, want := range taken {
			role, member := p.n.groups.Role(sg, caller)
			if !member {
				continue
			}
			if give := min(want, p.n.offerFor(sg, m.Shares[sg], role, distanceIn(distance, sg))); give > 0 {
				m.Shares[sg] -= give
				granted[sg] = give
			}
		}
		return (member && m.AddHolder(caller)) || len(granted) > 0
	})
	if err != nil {
		return nil, false, err
	}
	return granted, meta.Owned(), nil
}

// acknowledge tells p that this peer verified and holds ref, taking the
// shares p offered in the syncgroups this peer belongs to. It returns what p
// granted and whether p keeps its copy. On failure p keeps its shares: the
// blob keeps an owner.
func (n *Node) acknowledge(ctx context.Context, p peer.ID, ref Ref, offered map[string]int32) (map[string]int32, bool, error) {
	granted, keeping, err := n.client.AcceptBlobOwnership(ctx, p, ref, n.take(offered))
	if err != nil {
		n.ackFailed(ref, p, err)
	}
	return granted, keeping, err
}

// ackFailed logs an acknowledgement to p that failed.
func (n *Node) ackFailed(ref Ref, p peer.ID, err error) {
	n.cfg.log.Debug("ownership: acknowledging a fetch failed; the sender keeps its shares", "ref", ref, "peer", p, "err", err)
}

// take returns the shares offered that this peer takes: those of the
// syncgroups it belongs to.
func (n *Node) take(offered map[string]int32) map[string]int32 {
	take := map[string]int32{}
	for sg, k := range offered {
		if _, member := n.groups.MyRole(sg); member {
			take[sg] = k
		}
	}
	return take
}

// Shares returns this peer's ownership shares of ref per syncgroup.
func (n *Node) Shares(ctx context.Context, ref Ref) (map[string]int32, error) {
	meta, _, err := n.meta.BlobMeta(ctx, ref)
	return maps.Clone(meta.Shares), err
}
