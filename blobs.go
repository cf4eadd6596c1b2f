package blobsync

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/blobsync/blobsync/datastore"
)

// PutOptions say how a blob is shared.
type PutOptions struct {
	// Public serves the blob to anyone who asks by its BlobRef. Once public, a
	// blob stays public when put again.
	Public bool
	// Syncgroups to announce the blob in; this peer must be a member of each.
	// This peer takes datastore.InitialShares of ownership in each group it
	// introduces the blob to. A blob put into no syncgroup is pinned: nothing
	// else would keep it here.
	Syncgroups []string
}

// Put stores the bytes of r, announces their BlobRef in opts.Syncgroups, and
// returns the BlobRef and size. An unknown syncgroup is an error before
// anything is stored.
func (n *Node) Put(ctx context.Context, r io.Reader, opts PutOptions) (Ref, int64, error) {
	for _, id := range opts.Syncgroups {
		if _, err := n.groups.Group(id); err != nil {
			return Ref{}, 0, err
		}
	}
	ref, size, err := n.blobs.Put(r)
	if err != nil {
		return Ref{}, 0, err
	}
	sp, _, err := n.meta.Signpost(ctx, ref)
	if err != nil {
		return Ref{}, 0, err
	}
	_, err = n.meta.UpdateBlobMeta(ctx, ref, func(m *datastore.BlobMeta) bool {
		before := m.Clone()
		n.held(m, size)
		m.Public = m.Public || opts.Public
		m.Pinned = m.Pinned || len(opts.Syncgroups) == 0
		for _, id := range opts.Syncgroups {
			// Introducing the blob to a group creates its shares, once: not if
			// this peer had shares there or learned the blob there before.
			if _, had := m.Shares[id]; !had && !sp.HasSyncgroup(id) {
				if m.Shares == nil {
					m.Shares = map[string]int32{}
				}
				m.Shares[id] = datastore.InitialShares
			}
		}
		return !m.Equal(before)
	})
	if err != nil {
		return Ref{}, 0, err
	}
	for _, id := range opts.Syncgroups {
		if err := n.groups.Announce(ctx, id, []datastore.BlobAnnouncement{{Ref: ref, Holder: n.h.ID()}}); err != nil {
			return ref, size, fmt.Errorf("blob %s stored, but announcing it in %s failed: %w", ref, id, err)
		}
	}
	n.provideIfServed(ctx, ref)
	n.checkBudget()
	return ref, size, nil
}

// held records in m that the blob is held now, with size bytes.
func (n *Node) held(m *datastore.BlobMeta, size int64) {
	now := n.cfg.now()
	m.Size = size
	if m.Created.IsZero() {
		m.Created = now
	}
	m.Referenced = now
}

// Open opens a held blob for reading; the error wraps ErrNotFound if it is not held.
func (n *Node) Open(ref Ref) (*os.File, int64, error) { return n.blobs.Open(ref) }

// Touch records that a held blob was read (for the storage budget: the blobs
// read least recently go first).
func (n *Node) Touch(ctx context.Context, ref Ref) error {
	_, err := n.meta.UpdateBlobMeta(ctx, ref, func(m *datastore.BlobMeta) bool {
		if n.cfg.now().Sub(m.Accessed) < time.Minute {
			return false
		}
		m.Accessed = n.cfg.now()
		return true
	})
	return err
}

// Has reports whether the blob is held here, and its size.
func (n *Node) Has(ref Ref) (int64, bool, error) { return n.blobs.Has(ref) }

// BlobInfo describes a held blob.
type BlobInfo struct {
	Ref        Ref              `json:"ref"`
	Size       int64            `json:"size"`
	Public     bool             `json:"public"`
	Pinned     bool             `json:"pinned"`
	Shares     map[string]int32 `json:"shares,omitempty"` // ownership shares per syncgroup
	Holders    int              `json:"holders"`          // peers that acknowledged holding it
	Created    time.Time        `json:"created"`
	Accessed   time.Time        `json:"accessed,omitzero"`
	Syncgroups []string         `json:"syncgroups,omitempty"`
}

// Owned reports whether this peer must keep the blob (shares or a pin).
func (b BlobInfo) Owned() bool {
	return datastore.BlobMeta{Pinned: b.Pinned, Shares: b.Shares}.Owned()
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
		sp, _, err := n.meta.Signpost(ctx, b.Ref)
		if err != nil {
			return nil, err
		}
		out = append(out, BlobInfo{
			Ref: b.Ref, Size: b.Size, Public: meta.Public, Pinned: meta.Pinned, Shares: meta.Shares, Holders: len(meta.Holders),
			Created: meta.Created, Accessed: meta.Accessed, Syncgroups: sp.SgIDs,
		})
	}
	return out, nil
}

// Partials returns the partial fetch files kept for resume.
func (n *Node) Partials() ([]datastore.BlobInfo, error) { return n.blobs.Partials() }
