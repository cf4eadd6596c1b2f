package blobsync

import (
	"context"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// policy answers the blob protocol's authorization questions (DESIGN §6): a
// caller may have a blob put as public; any other blob is answered exactly like
// an unknown one. Syncgroup membership will widen this to the members of the
// groups a blob was learned in.
type policy struct{ n *Node }

func (p policy) MayServe(ctx context.Context, _ peer.ID, ref datastore.Ref) (bool, error) {
	meta, _, err := p.n.meta.BlobMeta(ctx, ref)
	return meta.Public, err
}

// VisibleSignpost filters ref's signpost to the syncgroups caller belongs to.
// Without syncgroup membership a caller belongs to none, so it sees nothing.
func (p policy) VisibleSignpost(ctx context.Context, caller peer.ID, ref datastore.Ref) (datastore.Signpost, error) {
	sp, found, err := p.n.meta.Signpost(ctx, ref)
	if err != nil || !found {
		return datastore.Signpost{}, err
	}
	member := func(string) bool { return false }
	return sp.Filter(member, func(peer.ID) bool { return true }), nil
}
