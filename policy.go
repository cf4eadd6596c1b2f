package blobsync

import (
	"context"
	"slices"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// policy answers the blob protocol's authorization questions (DESIGN §6): a
// caller may have a blob put as public, or one learned in a syncgroup the
// caller is a member of; any other blob is answered exactly like an unknown one.
type policy struct{ n *Node }

func (p policy) MayServe(ctx context.Context, caller peer.ID, ref datastore.Ref) (bool, error) {
	meta, _, err := p.n.meta.BlobMeta(ctx, ref)
	if err != nil || meta.Public {
		return meta.Public, err
	}
	sp, _, err := p.n.meta.Signpost(ctx, ref)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(sp.SgIDs, func(sg string) bool { return p.n.groups.IsMember(sg, caller) }), nil
}

// VisibleSignpost filters ref's signpost to the syncgroups caller belongs to,
// and to locations that are members of one of them.
func (p policy) VisibleSignpost(ctx context.Context, caller peer.ID, ref datastore.Ref) (datastore.Signpost, error) {
	sp, found, err := p.n.meta.Signpost(ctx, ref)
	if err != nil || !found {
		return datastore.Signpost{}, err
	}
	var shared []string
	for _, sg := range sp.SgIDs {
		if p.n.groups.IsMember(sg, caller) {
			shared = append(shared, sg)
		}
	}
	keepSg := func(sg string) bool { return slices.Contains(shared, sg) }
	keepPeer := func(l peer.ID) bool {
		return slices.ContainsFunc(shared, func(sg string) bool { return p.n.groups.IsMember(sg, l) })
	}
	return sp.Filter(keepSg, keepPeer), nil
}
