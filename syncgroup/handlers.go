package syncgroup

import (
	"context"
	"fmt"
	"slices"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// The Manager answers the syncgroup protocol (protocol.Syncgroups).
var _ protocol.Syncgroups = (*Manager)(nil)

// memberGroup returns syncgroup id if caller is one of its members. To
// anyone else the answer is exactly that for a syncgroup this peer is not in:
// strangers cannot learn which syncgroups this peer belongs to.
func (m *Manager) memberGroup(id string, caller peer.ID) (*group, error) {
	g, err := m.group(id)
	if err != nil {
		return nil, err
	}
	if !m.IsMember(id, caller) {
		return nil, fmt.Errorf("%w: %s", protocol.ErrUnknownSyncgroup, id)
	}
	return g, nil
}

// HandleJoin admits caller if the ACL does, announcing it to the members.
func (m *Manager) HandleJoin(ctx context.Context, id string, caller peer.ID, role datastore.Role, addrs []ma.Multiaddr) (datastore.Spec, error) {
	g, err := m.group(id)
	if err != nil {
		return datastore.Spec{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	spec := g.rec.Spec
	if caller != spec.Creator && !spec.ACL.Admits(caller) {
		return datastore.Spec{}, fmt.Errorf("%w: %s may not join %s", protocol.ErrJoinRefused, caller, id)
	}
	if cur, ok := g.rec.Member(caller); ok && cur.Role == role && slices.EqualFunc(cur.Addrs, addrs, ma.Multiaddr.Equal) {
		return spec, nil // joined already, nothing new to say
	}
	mb := datastore.Member{Peer: caller, Role: role, Addrs: addrs, Since: m.cfg.Now()}
	if _, err := m.appendOwn(ctx, id, g, []datastore.LogEntry{{Member: &mb}}); err != nil {
		return datastore.Spec{}, err
	}
	return spec, nil
}

// HandleMembers returns the members of id.
func (m *Manager) HandleMembers(_ context.Context, id string, caller peer.ID) ([]datastore.Member, error) {
	g, err := m.memberGroup(id, caller)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.rec.Members), nil
}

// HandlePull returns the entries caller lacks: per origin in Seq order.
func (m *Manager) HandlePull(ctx context.Context, id string, caller peer.ID, since map[peer.ID]uint64, limit int) ([]datastore.LogEntry, bool, error) {
	g, err := m.memberGroup(id, caller)
	if err != nil {
		return nil, false, err
	}
	if limit <= 0 || limit > protocol.MaxPullEntries {
		limit = protocol.MaxPullEntries
	}
	g.mu.Lock()
	wm := cloneMap(g.wm) // entries up to these marks are stored and never change
	g.mu.Unlock()
	origins := make([]peer.ID, 0, len(wm))
	for o := range wm {
		origins = append(origins, o)
	}
	slices.Sort(origins)

	var out []datastore.LogEntry
	for i, o := range origins {
		if wm[o] <= since[o] {
			continue
		}
		if len(out) == limit {
			return out, true, nil
		}
		es, err := m.store.LogEntries(ctx, id, o, since[o], limit-len(out))
		if err != nil {
			return nil, false, err
		}
		out = append(out, es...)
		if len(out) == limit && (es[len(es)-1].Seq < wm[o] || moreAfter(origins[i+1:], wm, since)) {
			return out, true, nil
		}
	}
	return out, false, nil
}

func moreAfter(origins []peer.ID, wm, since map[peer.ID]uint64) bool {
	return slices.ContainsFunc(origins, func(o peer.ID) bool { return wm[o] > since[o] })
}

// HandleAnnounce applies the entries a member pushed — its own entries only:
// a member cannot take another's sequence numbers with forged entries. After
// a gap it pulls from that member.
func (m *Manager) HandleAnnounce(ctx context.Context, id string, caller peer.ID, entries []datastore.LogEntry) (int, error) {
	g, err := m.memberGroup(id, caller)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if e.Origin != caller {
			return 0, fmt.Errorf("%w: %s pushed an entry of %s", protocol.ErrBadRequest, caller, e.Origin)
		}
	}
	g.mu.Lock()
	applied, pending, err := m.apply(ctx, id, g, caller, entries)
	g.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if pending {
		m.pullAsync(caller, id)
	}
	return len(applied), nil
}

// Announce adds BlobRef announcements to syncgroup id's log as this peer's
// own entries and pushes them to the members.
func (m *Manager) Announce(ctx context.Context, id string, anns []datastore.BlobAnnouncement) error {
	g, err := m.group(id)
	if err != nil {
		return err
	}
	bodies := make([]datastore.LogEntry, len(anns))
	for i := range anns {
		bodies[i].Blob = &anns[i]
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	_, err = m.appendOwn(ctx, id, g, bodies)
	return err
}

// Refresh announces this peer's current addresses and role in every syncgroup
// where the members know others.
func (m *Manager) Refresh(ctx context.Context) error {
	for _, rec := range m.Groups() {
		g, err := m.group(rec.Spec.ID)
		if err != nil {
			continue
		}
		g.mu.Lock()
		cur, ok := g.rec.Member(m.cfg.Self)
		addrs := m.cfg.Addrs()
		if ok && cur.Role == g.rec.MyRole && slices.EqualFunc(cur.Addrs, addrs, ma.Multiaddr.Equal) {
			g.mu.Unlock()
			continue
		}
		mb := datastore.Member{Peer: m.cfg.Self, Role: g.rec.MyRole, Addrs: addrs, Since: m.cfg.Now()}
		_, err = m.appendOwn(ctx, rec.Spec.ID, g, []datastore.LogEntry{{Member: &mb}})
		g.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// appendOwn numbers bodies as this peer's next entries, applies them and
// pushes them to the other members. The caller holds g.mu.
func (m *Manager) appendOwn(ctx context.Context, id string, g *group, bodies []datastore.LogEntry) ([]datastore.LogEntry, error) {
	now := m.cfg.Now()
	next := g.wm[m.cfg.Self]
	entries := make([]datastore.LogEntry, len(bodies))
	for i, b := range bodies {
		next++
		entries[i] = datastore.LogEntry{Origin: m.cfg.Self, Seq: next, Time: now, Blob: b.Blob, Member: b.Member}
	}
	applied, _, err := m.apply(ctx, id, g, m.cfg.Self, entries)
	if err != nil {
		return nil, err
	}
	if len(applied) != len(entries) {
		return nil, fmt.Errorf("syncgroup %s: this peer may not announce that (not a member, or not admitted by the ACL)", id)
	}
	m.pushAsync(id, &g.rec, applied)
	return applied, nil
}
