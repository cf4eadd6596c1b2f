package blobsync

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/blobsync/blobsync/datastore"
)

// Pin keeps a held blob here whatever its shares: gc never drops it.
func (n *Node) Pin(ctx context.Context, ref Ref) error { return n.setPinned(ctx, ref, true) }

// Unpin releases a pin: the blob stays while this peer holds shares of it.
func (n *Node) Unpin(ctx context.Context, ref Ref) error { return n.setPinned(ctx, ref, false) }

func (n *Node) setPinned(ctx context.Context, ref Ref, pinned bool) error {
	if _, held, err := n.blobs.Has(ref); err != nil {
		return err
	} else if !held {
		return fmt.Errorf("blob %s: %w", ref, ErrNotFound)
	}
	_, err := n.meta.UpdateBlobMeta(ctx, ref, func(m *datastore.BlobMeta) bool {
		changed := m.Pinned != pinned
		m.Pinned = pinned
		return changed
	})
	return err
}

// GCResult says what a collection dropped.
type GCResult struct {
	Dropped []BlobInfo `json:"dropped"`
	Freed   int64      `json:"freed"`
	Kept    int        `json:"kept"` // blobs held afterwards
}

// GC drops the local copies this peer no longer owns: no shares in any
// syncgroup, no pin, and another peer that acknowledged holding the blob says
// (HaveBlob, asked now) that it still does. It never drops the last copy.
func (n *Node) GC(ctx context.Context) (GCResult, error) { return n.collect(ctx, -1) }

// collect drops droppable copies, those read least recently first, until
// need bytes are freed (all of them if need < 0).
func (n *Node) collect(ctx context.Context, need int64) (GCResult, error) {
	n.gcMu.Lock()
	defer n.gcMu.Unlock()
	blobs, err := n.List(ctx)
	if err != nil {
		return GCResult{}, err
	}
	lastUse := func(b BlobInfo) time.Time {
		if b.Accessed.After(b.Created) {
			return b.Accessed
		}
		return b.Created
	}
	slices.SortFunc(blobs, func(a, b BlobInfo) int { return lastUse(a).Compare(lastUse(b)) })
	res := GCResult{Kept: len(blobs)}
	for _, b := range blobs {
		if need >= 0 && res.Freed >= need {
			break
		}
		if b.Owned() || b.Holders == 0 || !n.heldElsewhere(ctx, b.Ref) {
			continue
		}
		dropped := false
		// Decide and delete under the blob's metadata lock, so a pin or a
		// share that arrives meanwhile is seen.
		_, err := n.meta.UpdateBlobMeta(ctx, b.Ref, func(m *datastore.BlobMeta) bool {
			if m.Owned() || len(m.Holders) == 0 {
				return false
			}
			if err := n.blobs.Delete(b.Ref); err != nil {
				n.cfg.log.Warn("gc: dropping a copy", "ref", b.Ref, "err", err)
				return false
			}
			dropped = true
			return false
		})
		if err != nil {
			return res, err
		}
		if dropped {
			res.Dropped = append(res.Dropped, b)
			res.Freed += b.Size
			res.Kept--
		}
	}
	if len(res.Dropped) > 0 {
		n.cfg.log.Info("gc: dropped copies others hold", "blobs", len(res.Dropped), "bytes", res.Freed)
	}
	return res, nil
}

// checkBudget starts a collection in the background when the blobs held
// exceed the storage budget, if there is one.
func (n *Node) checkBudget() {
	if n.cfg.storageBudget <= 0 {
		return
	}
	select {
	case n.budgetCheck <- struct{}{}:
	default:
	}
}

// budgetLoop collects whenever checkBudget asks and the budget is exceeded.
func (n *Node) budgetLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.budgetCheck:
		}
		blobs, err := n.blobs.List()
		if err != nil {
			n.cfg.log.Warn("storage budget: listing blobs", "err", err)
			continue
		}
		var used int64
		for _, b := range blobs {
			used += b.Size
		}
		if over := used - n.cfg.storageBudget; over > 0 {
			res, err := n.collect(ctx, over)
			if err != nil {
				n.cfg.log.Warn("storage budget: collecting", "err", err)
			} else if res.Freed < over {
				n.cfg.log.Warn("storage budget exceeded by blobs this peer must keep", "used", used, "budget", n.cfg.storageBudget, "freed", res.Freed)
			}
		}
	}
}

// heldElsewhere asks the peers that acknowledged holding ref, most recent
// first and at most three, whether one still holds it.
func (n *Node) heldElsewhere(ctx context.Context, ref Ref) bool {
	meta, _, err := n.meta.BlobMeta(ctx, ref)
	if err != nil {
		return false
	}
	holders := slices.Clone(meta.Holders)
	slices.Reverse(holders)
	for _, p := range holders[:min(len(holders), 3)] {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		have, err := n.client.HaveBlob(qctx, p, ref)
		cancel()
		if err == nil && have.Held {
			return true
		}
	}
	return false
}
