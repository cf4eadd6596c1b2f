package datastore

import (
	"maps"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// InitialShares is how many ownership shares a peer gives itself when it
// introduces a BlobRef to a syncgroup (Syncbase's initialBlobOwnerShares).
const InitialShares = 2

// MaxHolders caps the acknowledged holders a BlobMeta remembers.
const MaxHolders = 16

// BlobMeta is what this peer records about a blob it holds or held.
type BlobMeta struct {
	Size    int64
	Public  bool // served to anyone who asks by its BlobRef
	Created time.Time
	// Shares are this peer's ownership shares per syncgroup. A key present
	// with 0 means the peer had shares there and gave them away: it never
	// creates shares for that syncgroup again.
	Shares map[string]int32
	Pinned bool
	// Holders are peers that acknowledged holding the blob after fetching it
	// from this peer, most recent last, at most MaxHolders.
	Holders    []peer.ID
	Referenced time.Time // last put or announced
	Accessed   time.Time // last served or read
}

// TotalShares returns the shares this peer holds in all syncgroups.
func (m BlobMeta) TotalShares() int32 {
	var n int32
	for _, s := range m.Shares {
		n += s
	}
	return n
}

// Owned reports whether this peer must keep the blob: it holds shares or a pin.
func (m BlobMeta) Owned() bool { return m.Pinned || m.TotalShares() > 0 }

// AddHolder records that p acknowledged holding the blob.
func (m *BlobMeta) AddHolder(p peer.ID) bool {
	if i := slices.Index(m.Holders, p); i >= 0 {
		if i == len(m.Holders)-1 {
			return false
		}
		m.Holders = slices.Delete(m.Holders, i, i+1)
	}
	m.Holders = append(m.Holders, p)
	if len(m.Holders) > MaxHolders {
		m.Holders = slices.Delete(m.Holders, 0, len(m.Holders)-MaxHolders)
	}
	return true
}

// Clone returns a deep copy of m.
func (m BlobMeta) Clone() BlobMeta {
	m.Shares = maps.Clone(m.Shares)
	m.Holders = slices.Clone(m.Holders)
	return m
}

// Equal reports whether m and o hold the same values.
func (m BlobMeta) Equal(o BlobMeta) bool {
	return m.Size == o.Size && m.Public == o.Public && m.Created.Equal(o.Created) &&
		maps.Equal(m.Shares, o.Shares) && m.Pinned == o.Pinned && slices.Equal(m.Holders, o.Holders) &&
		m.Referenced.Equal(o.Referenced) && m.Accessed.Equal(o.Accessed)
}
