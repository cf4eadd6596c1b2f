package datastore

import (
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	// MaxLocations caps a signpost's locations (Syncbase used 4).
	MaxLocations = 4
	// MaxSignpostSyncgroups caps the syncgroups a signpost records.
	MaxSignpostSyncgroups = 64
)

// A Location is a peer that probably holds a blob.
type Location struct {
	Peer     peer.ID
	WhenSeen time.Time
	IsServer bool // a server of a syncgroup the blob was seen in
	IsProxy  bool
}

// A Signpost is what this peer knows about a blob it may not hold: where it
// probably is, which syncgroups it was learned through, and how often this peer
// has tried to fetch it.
type Signpost struct {
	Locations []Location // best first: servers, then proxies, then newest; at most MaxLocations
	SgIDs     []string   // sorted, unique, at most MaxSignpostSyncgroups
	// FetchAttempts counts this peer's own fetch attempts. It never travels:
	// Merge ignores the other side's, and Filter clears it.
	FetchAttempts uint32
}

// IsZero reports whether sp holds nothing.
func (sp Signpost) IsZero() bool {
	return len(sp.Locations) == 0 && len(sp.SgIDs) == 0 && sp.FetchAttempts == 0
}

// Clone returns a deep copy of sp.
func (sp Signpost) Clone() Signpost {
	return Signpost{Locations: slices.Clone(sp.Locations), SgIDs: slices.Clone(sp.SgIDs), FetchAttempts: sp.FetchAttempts}
}

// Merge folds other into sp and reports whether sp changed. For a peer known to
// both, the entry seen most recently wins; syncgroups are united; the locations
// are then ordered (servers, proxies, newest) and capped at MaxLocations.
// other.FetchAttempts is ignored: attempts are local.
func (sp *Signpost) Merge(other Signpost) bool {
	changed := false
	for _, loc := range other.Locations {
		if loc.Peer == "" {
			continue
		}
		i := slices.IndexFunc(sp.Locations, func(l Location) bool { return l.Peer == loc.Peer })
		switch {
		case i < 0:
			sp.Locations = append(sp.Locations, loc)
			changed = true
		case loc.WhenSeen.After(sp.Locations[i].WhenSeen) && sp.Locations[i] != loc:
			sp.Locations[i] = loc
			changed = true
		}
	}
	if changed {
		slices.SortStableFunc(sp.Locations, compareLocations)
		if len(sp.Locations) > MaxLocations {
			sp.Locations = slices.Delete(sp.Locations, MaxLocations, len(sp.Locations))
		}
	}
	for _, sg := range other.SgIDs {
		if sp.AddSyncgroup(sg) {
			changed = true
		}
	}
	return changed
}

// AddSyncgroup records that the blob was learned through sg. It reports false
// if sg was already there or the signpost is at MaxSignpostSyncgroups.
func (sp *Signpost) AddSyncgroup(sg string) bool {
	i, found := slices.BinarySearch(sp.SgIDs, sg)
	if found || len(sp.SgIDs) >= MaxSignpostSyncgroups {
		return false
	}
	sp.SgIDs = slices.Insert(sp.SgIDs, i, sg)
	return true
}

// HasSyncgroup reports whether the blob was learned through sg.
func (sp Signpost) HasSyncgroup(sg string) bool {
	_, found := slices.BinarySearch(sp.SgIDs, sg)
	return found
}

// Filter returns what a peer may be told: the syncgroups keepSg admits, and the
// locations keepPeer admits, only if some syncgroup remains. FetchAttempts is
// never included.
func (sp Signpost) Filter(keepSg func(sg string) bool, keepPeer func(p peer.ID) bool) Signpost {
	var out Signpost
	for _, sg := range sp.SgIDs {
		if keepSg(sg) {
			out.SgIDs = append(out.SgIDs, sg)
		}
	}
	if len(out.SgIDs) == 0 {
		return Signpost{}
	}
	for _, l := range sp.Locations {
		if keepPeer(l.Peer) {
			out.Locations = append(out.Locations, l)
		}
	}
	return out
}

// compareLocations orders servers first, then proxies, then the most recently
// seen; peer IDs break ties so the order is total.
func compareLocations(a, b Location) int {
	if a.IsServer != b.IsServer {
		if a.IsServer {
			return -1
		}
		return 1
	}
	if a.IsProxy != b.IsProxy {
		if a.IsProxy {
			return -1
		}
		return 1
	}
	if c := b.WhenSeen.Compare(a.WhenSeen); c != 0 {
		return c
	}
	return strings.Compare(string(a.Peer), string(b.Peer))
}
