package blobsync

import (
	"context"
	"slices"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
)

// Crash recovery. A fetch installs the verified blob, then acknowledges it to
// the sender (taking the shares offered) and records it here in one write,
// which does not wait for the disk. A crash between the install and that
// write, or a power cut before the write reaches the disk, leaves a held
// blob with no metadata: no shares here, and none recorded as granted. At
// start the node finds such blobs and finishes their fetches:
// it acknowledges each to the locations its signpost names (only the peer
// that served the transfer, within the ten minutes it remembers it, accepts;
// if the crash came after it granted the shares, it grants the same again)
// and records the blob with what was granted.

// maxRecoverAcks caps the locations asked to accept one recovered blob.
const maxRecoverAcks = 8

// startHeld is the start-up pass over the blobs held here when the store was
// opened (the listing made then): it finishes every fetch a crash cut off
// after its install (which provides the blob, if served), and provides the
// other blobs this node serves. A blob this run installed is not in the
// listing, so a fetch under way is never taken for one cut off.
func (n *Node) startHeld(ctx context.Context) {
	recovered := 0
	for _, b := range n.blobs.TakeOpenListing() {
		if ctx.Err() != nil {
			return
		}
		meta, _, err := n.meta.BlobMeta(ctx, b.Ref)
		if err != nil {
			n.cfg.log.Warn("recovery: reading blob metadata", "ref", b.Ref, "err", err)
			continue
		}
		if !meta.Created.IsZero() { // recorded
			n.provideIfServed(ctx, b.Ref)
			continue
		}
		if err := n.recoverFetch(ctx, b.Ref, b.Size); err != nil {
			n.cfg.log.Warn("recovery: recording a fetched blob", "ref", b.Ref, "err", err)
			continue
		}
		recovered++
	}
	if recovered > 0 {
		n.cfg.log.Info("recovery: finished fetches cut off by a crash", "blobs", recovered)
	}
}

// recoverFetch acknowledges ref to the first location that accepts it and
// records it as held with the shares granted.
func (n *Node) recoverFetch(ctx context.Context, ref Ref, size int64) error {
	sp, _, err := n.meta.Signpost(ctx, ref)
	if err != nil {
		return err
	}
	take := map[string]int32{}
	for _, sg := range sp.SgIDs {
		take[sg] = protocol.MaxShares // the sender grants no more than it would offer
	}
	locs := slices.DeleteFunc(slices.Clone(sp.Locations), func(l datastore.Location) bool { return l.Peer == n.h.ID() })
	for _, l := range locs[:min(len(locs), maxRecoverAcks)] {
		granted, keeping, err := n.acknowledge(ctx, l.Peer, ref, take)
		if err == nil {
			return n.recordFetched(ctx, ref, size, l.Peer, granted, !keeping)
		}
	}
	return n.recordFetched(ctx, ref, size, "", nil, false)
}
