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
	if err := n.recordHeld(ctx, ref, size, opts.Public); err != nil {
		return Ref{}, 0, err
	}
	for _, id := range opts.Syncgroups {
		if err := n.groups.Announce(ctx, id, []datastore.BlobAnnouncement{{Ref: ref, Holder: n.h.ID()}}); err != nil {
			return ref, size, fmt.Errorf("blob %s stored, but announcing it in %s failed: %w", ref, id, err)
		}
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
	Ref        Ref       `json:"ref"`
	Size       int64     `json:"size"`
	Public     bool      `json:"public"`
	Created    time.Time `json:"created"`
	Syncgroups []string  `json:"syncgroups,omitempty"`
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
		out = append(out, BlobInfo{Ref: b.Ref, Size: b.Size, Public: meta.Public, Created: meta.Created, Syncgroups: sp.SgIDs})
	}
	return out, nil
}

// Partials returns the partial fetch files kept for resume.
func (n *Node) Partials() ([]datastore.BlobInfo, error) { return n.blobs.Partials() }
