package syncgroup

import (
	"cmp"
	"context"
	"slices"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// apply takes the entries that extend g's log, received from sender (this
// peer for its own entries), and stores them in one batch with the member
// list they change and the signposts they imply. An origin's entries are
// taken only in Seq order from its watermark on; entries already held are
// skipped; an entry after a gap, or from an origin not (yet) a member, is left
// for a later pull: pending reports that some were. The caller holds g.mu.
func (m *Manager) apply(ctx context.Context, id string, g *group, sender peer.ID, entries []datastore.LogEntry) (applied []datastore.LogEntry, pending bool, err error) {
	byOrigin := map[peer.ID][]datastore.LogEntry{}
	for _, e := range entries {
		byOrigin[e.Origin] = append(byOrigin[e.Origin], e)
	}
	origins := make([]peer.ID, 0, len(byOrigin))
	for o, es := range byOrigin {
		slices.SortFunc(es, func(a, b datastore.LogEntry) int { return cmp.Compare(a.Seq, b.Seq) })
		origins = append(origins, o)
	}
	slices.Sort(origins)

	rec, wm := g.rec.Clone(), cloneMap(g.wm)
	moved := map[peer.ID]bool{} // members announced at new addresses
	// Entries of one origin may wait on another's (a member admitted by an
	// entry that arrives later in the batch): repeat until nothing moves.
	for progress := true; progress; {
		progress = false
		for _, o := range origins {
			es := byOrigin[o]
			for len(es) > 0 {
				e := es[0]
				if e.Seq <= wm[o] { // held already
					es = es[1:]
					continue
				}
				if e.Seq != wm[o]+1 || !allowed(&rec, e) {
					break
				}
				if e.Member != nil && fold(&rec, *e.Member) && e.Member.Peer != m.cfg.Self {
					moved[e.Member.Peer] = true
				}
				wm[o] = e.Seq
				applied = append(applied, e)
				es = es[1:]
				progress = true
			}
			byOrigin[o] = es
		}
	}
	for _, es := range byOrigin {
		pending = pending || len(es) > 0
	}
	if len(applied) == 0 {
		return nil, pending, nil
	}

	ch := datastore.GroupChange{Group: &rec, Entries: applied, Watermarks: map[peer.ID]uint64{}, Signposts: map[datastore.Ref]datastore.Signpost{}}
	for _, e := range applied {
		ch.Watermarks[e.Origin] = wm[e.Origin]
		if e.Blob != nil {
			sp := ch.Signposts[e.Blob.Ref]
			sp.Merge(m.signpostOf(&rec, id, sender, e.Blob.Holder))
			ch.Signposts[e.Blob.Ref] = sp
		}
	}
	changed, err := m.store.ApplyGroupChange(ctx, id, ch)
	if err != nil {
		return nil, false, err
	}
	g.rec, g.wm = rec, wm
	for _, e := range applied {
		if e.Member != nil && e.Member.Peer != m.cfg.Self {
			m.cfg.Learned(*e.Member)
		}
	}
	if len(changed) > 0 {
		m.cfg.Changed(id, changed)
	}
	// A member at a new address may have missed what was pushed to its old
	// one, and it may be what others waited for: contact it there now.
	for p := range moved {
		m.pullAsync(p, id)
	}
	return applied, pending, nil
}

// signpostOf is what a BlobRef announcement in syncgroup id, received from
// sender, says: the group, the sender and the holder as locations (servers
// marked as such), never this peer itself.
func (m *Manager) signpostOf(rec *datastore.Group, id string, sender, holder peer.ID) datastore.Signpost {
	now := m.cfg.Now()
	sp := datastore.Signpost{SgIDs: []string{id}}
	for _, p := range []peer.ID{sender, holder} {
		if p == m.cfg.Self || p == "" || slices.ContainsFunc(sp.Locations, func(l datastore.Location) bool { return l.Peer == p }) {
			continue
		}
		mb, _ := rec.Member(p)
		sp.Locations = append(sp.Locations, datastore.Location{Peer: p, WhenSeen: now, IsServer: mb.Role == datastore.RoleServer})
	}
	return sp
}

// allowed reports whether e may enter rec's log: its origin must be a member,
// except that the creator may announce itself; a member entry about another
// peer must be one the ACL admits.
func allowed(rec *datastore.Group, e datastore.LogEntry) bool {
	_, originIsMember := rec.Member(e.Origin)
	if e.Member == nil {
		return originIsMember
	}
	subject := e.Member.Peer
	if subject == e.Origin {
		return originIsMember || subject == rec.Spec.Creator
	}
	return originIsMember && (subject == rec.Spec.Creator || rec.Spec.ACL.Admits(subject))
}

// fold records a member announcement unless a later one is already held,
// and reports whether it put the member at new addresses.
func fold(rec *datastore.Group, mb datastore.Member) (moved bool) {
	cur, ok := rec.Member(mb.Peer)
	if ok && !mb.Since.After(cur.Since) {
		return false
	}
	rec.SetMember(mb)
	return len(mb.Addrs) > 0 && !slices.EqualFunc(cur.Addrs, mb.Addrs, ma.Multiaddr.Equal)
}
