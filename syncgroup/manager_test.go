package syncgroup

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

const sg = "/blobsync/sg/family"

func ref(i int) datastore.Ref { return datastore.RefOf(fmt.Appendf(nil, "blob %d", i)) }

func memberIDs(g datastore.Group) []peer.ID {
	var out []peer.ID
	for _, m := range g.Members {
		out = append(out, m.Peer)
	}
	return out
}

func TestCreateJoinAndMembersReachEveryone(t *testing.T) {
	n := newNetwork()
	a, b, c := n.add(t), n.add(t), n.add(t)
	if _, err := a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal); err != nil {
		t.Fatal(err)
	}
	if !a.served[sg] {
		t.Fatal("created group not served")
	}
	if _, err := b.m.Join(t.Context(), sg, a.id, datastore.RoleServer); err != nil {
		t.Fatal(err)
	}
	if _, err := c.m.Join(t.Context(), sg, b.id, datastore.RoleLeaf); err != nil { // through b, not the creator
		t.Fatal(err)
	}
	want := []peer.ID{a.id, b.id, c.id}
	slices.Sort(want)
	for _, nd := range []*node{a, b, c} {
		eventually(t, "every member to know all three", func() bool {
			g, err := nd.m.Group(sg)
			return err == nil && slices.Equal(memberIDs(g), want)
		})
	}
	if role, ok := a.m.Role(sg, b.id); !ok || role != datastore.RoleServer {
		t.Fatalf("a sees b as %v, %v", role, ok)
	}
	if role, ok := a.m.Role(sg, c.id); !ok || role != datastore.RoleLeaf {
		t.Fatalf("a sees c as %v, %v", role, ok)
	}
	if g, _ := c.m.Group(sg); g.Spec.Creator != a.id || !g.Spec.ACL.Open || g.MyRole != datastore.RoleLeaf {
		t.Fatalf("c's record: %+v", g)
	}
}

func TestACLRefusesJoinAndChangesNothing(t *testing.T) {
	n := newNetwork()
	a, allowed, stranger := n.add(t), n.add(t), n.add(t)
	if _, err := a.m.Create(t.Context(), sg, datastore.ACL{Allow: []peer.ID{allowed.id}}, datastore.RoleNormal); err != nil {
		t.Fatal(err)
	}
	_, err := stranger.m.Join(t.Context(), sg, a.id, datastore.RoleNormal)
	if !errors.Is(err, protocol.ErrJoinRefused) {
		t.Fatalf("stranger's join: %v, want ErrJoinRefused", err)
	}
	if _, err := stranger.m.Group(sg); !errors.Is(err, protocol.ErrUnknownSyncgroup) {
		t.Fatalf("refused joiner kept the group: %v", err)
	}
	if groups, _ := stranger.meta.Groups(t.Context()); len(groups) != 0 {
		t.Fatalf("refused joiner stored %d groups", len(groups))
	}
	if a.m.IsMember(sg, stranger.id) {
		t.Fatal("a records the refused stranger as a member")
	}
	if _, err := allowed.m.Join(t.Context(), sg, a.id, datastore.RoleNormal); err != nil {
		t.Fatalf("allowed peer's join: %v", err)
	}
	if !a.m.IsMember(sg, allowed.id) {
		t.Fatal("allowed peer not a member")
	}
}

func TestAnnouncementsReachMembersAndSignposts(t *testing.T) {
	n := newNetwork()
	device, server, normal := n.add(t), n.add(t), n.add(t)
	device.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal)
	server.m.Join(t.Context(), sg, device.id, datastore.RoleServer)
	normal.m.Join(t.Context(), sg, device.id, datastore.RoleNormal)
	eventually(t, "device to know both", func() bool { g, _ := device.m.Group(sg); return len(g.Members) == 3 })

	r := ref(1)
	if err := device.m.Announce(t.Context(), sg, []datastore.BlobAnnouncement{{Ref: r, Holder: device.id}}); err != nil {
		t.Fatal(err)
	}
	for _, nd := range []*node{server, normal} {
		eventually(t, "the announcement to arrive", func() bool { return nd.signpost(t, r).HasSyncgroup(sg) })
		// The holder is a location; so is whoever relayed the entry, if a
		// member pulled it from another member before the device's push came.
		sp := nd.signpost(t, r)
		holder := slices.IndexFunc(sp.Locations, func(l datastore.Location) bool { return l.Peer == device.id })
		if holder < 0 || sp.Locations[holder].IsServer || len(sp.Locations) > 2 {
			t.Fatalf("signpost on %s: %+v", nd.id, sp)
		}
		for _, l := range sp.Locations {
			if l.Peer == server.id && !l.IsServer {
				t.Fatalf("the server relayed the entry but is not marked a server: %+v", sp)
			}
		}
		nd.mu.Lock()
		if nd.changed[r] == 0 {
			t.Errorf("Changed hook not told of %s", r)
		}
		nd.mu.Unlock()
	}
	// The device records the group for its own blob, without itself as a location.
	if sp := device.signpost(t, r); !sp.HasSyncgroup(sg) || len(sp.Locations) != 0 {
		t.Fatalf("device's own signpost: %+v", sp)
	}
}

func TestOfflineMemberCatchesUpByPulling(t *testing.T) {
	n := newNetwork()
	a, b, c := n.add(t), n.add(t), n.add(t)
	a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal)
	b.m.Join(t.Context(), sg, a.id, datastore.RoleServer)
	n.setOffline(b.id, true)

	// While b is away: c joins and a announces 2,500 blobs (several pull pages).
	c.m.Join(t.Context(), sg, a.id, datastore.RoleNormal)
	var anns []datastore.BlobAnnouncement
	for i := range 2500 {
		anns = append(anns, datastore.BlobAnnouncement{Ref: ref(i), Holder: a.id})
	}
	if err := a.m.Announce(t.Context(), sg, anns[:1000]); err != nil {
		t.Fatal(err)
	}
	if err := a.m.Announce(t.Context(), sg, anns[1000:]); err != nil {
		t.Fatal(err)
	}
	if b.signpost(t, ref(0)).HasSyncgroup(sg) {
		t.Fatal("an offline peer received an announcement")
	}

	n.setOffline(b.id, false)
	b.m.PeerConnected(a.id)
	eventually(t, "b to catch up", func() bool {
		wm, _ := b.m.Watermarks(sg)
		return wm[a.id] >= 3 // a's member entries for itself and c, then two announcements' worth
	})
	eventually(t, "b to hold every signpost", func() bool { return b.signpost(t, ref(2499)).HasSyncgroup(sg) })
	for _, i := range []int{0, 999, 1000, 2499} {
		if !b.signpost(t, ref(i)).HasSyncgroup(sg) {
			t.Fatalf("b lacks announcement %d", i)
		}
	}
	if !b.m.IsMember(sg, c.id) {
		t.Fatal("b did not learn of c, who joined while b was away")
	}
	wmA, _ := a.m.Watermarks(sg)
	wmB, _ := b.m.Watermarks(sg)
	if !maps(wmA, wmB) {
		t.Fatalf("watermarks differ after catching up: a %v, b %v", wmA, wmB)
	}
}

func maps(a, b map[peer.ID]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestDuplicateAndOutOfOrderAnnouncements(t *testing.T) {
	n := newNetwork()
	a, b := n.add(t), n.add(t)
	a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal)
	b.m.Join(t.Context(), sg, a.id, datastore.RoleNormal)
	n.setOffline(b.id, true) // no pushes: the test hands b entries itself
	for i := range 5 {
		a.m.Announce(t.Context(), sg, []datastore.BlobAnnouncement{{Ref: ref(i), Holder: a.id}})
	}
	wmA, _ := a.m.Watermarks(sg)
	all, err := a.meta.LogEntries(t.Context(), sg, a.id, 0, 100)
	if err != nil || uint64(len(all)) != wmA[a.id] {
		t.Fatalf("a's log: %d entries, watermark %d, %v", len(all), wmA[a.id], err)
	}
	wmB, _ := b.m.Watermarks(sg)
	held := wmB[a.id] // b holds a's first entries (from joining)
	fresh := all[held:]
	if len(fresh) != 5 {
		t.Fatalf("%d fresh entries, want 5", len(fresh))
	}
	// b stays offline while the test hands it entries directly: the pull a
	// gap starts fails, so the entries below reach b only as given.

	// Out of order: entries past a gap are left; nothing is stored.
	got, err := b.m.HandleAnnounce(t.Context(), sg, a.id, []datastore.LogEntry{fresh[2], fresh[4]})
	if err != nil || got != 0 {
		t.Fatalf("entries past a gap: applied %d, %v", got, err)
	}
	// In order, with a duplicate of itself and of an entry held: each applied once.
	got, err = b.m.HandleAnnounce(t.Context(), sg, a.id, []datastore.LogEntry{fresh[1], fresh[0], fresh[0], all[0]})
	if err != nil || got != 2 {
		t.Fatalf("entries 0,1 shuffled with duplicates: applied %d, %v; want 2", got, err)
	}
	got, _ = b.m.HandleAnnounce(t.Context(), sg, a.id, []datastore.LogEntry{fresh[1], fresh[0]})
	if got != 0 {
		t.Fatalf("re-sent entries applied %d times", got)
	}
	n.setOffline(b.id, false)
	b.m.PeerConnected(a.id)
	eventually(t, "the gap to be pulled", func() bool { w, _ := b.m.Watermarks(sg); return w[a.id] == wmA[a.id] })
	stored, _ := b.meta.LogEntries(t.Context(), sg, a.id, 0, 100)
	if len(stored) != len(all) {
		t.Fatalf("b stores %d of a's entries, want %d (no duplicates)", len(stored), len(all))
	}
	for i := range stored {
		if stored[i].Seq != uint64(i+1) {
			t.Fatalf("b's log of a: entry %d has seq %d", i, stored[i].Seq)
		}
	}
}

func TestNonMemberTrafficIsRefusedWithoutChange(t *testing.T) {
	n := newNetwork()
	a, b, stranger := n.add(t), n.add(t), n.add(t)
	a.m.Create(t.Context(), sg, datastore.ACL{Allow: []peer.ID{b.id}}, datastore.RoleNormal)
	b.m.Join(t.Context(), sg, a.id, datastore.RoleNormal)
	before, _ := a.m.Watermarks(sg)

	// To a non-member the answer is that for a group this peer is not in:
	// it cannot even learn that the group exists here.
	forged := []datastore.LogEntry{{Origin: stranger.id, Seq: 1, Blob: &datastore.BlobAnnouncement{Ref: ref(7), Holder: stranger.id}}}
	if _, err := a.m.HandleAnnounce(t.Context(), sg, stranger.id, forged); !errors.Is(err, protocol.ErrUnknownSyncgroup) {
		t.Fatalf("announce from a non-member: %v, want ErrUnknownSyncgroup", err)
	}
	if _, _, err := a.m.HandlePull(t.Context(), sg, stranger.id, nil, 10); !errors.Is(err, protocol.ErrUnknownSyncgroup) {
		t.Fatalf("pull by a non-member: %v", err)
	}
	if _, err := a.m.HandleMembers(t.Context(), sg, stranger.id); !errors.Is(err, protocol.ErrUnknownSyncgroup) {
		t.Fatalf("members for a non-member: %v", err)
	}
	// A member may push only its own entries: not a stranger's, nor another
	// member's (it would take that member's sequence numbers).
	if _, err := a.m.HandleAnnounce(t.Context(), sg, b.id, forged); !errors.Is(err, protocol.ErrBadRequest) {
		t.Fatalf("a stranger's entry pushed by a member: %v, want ErrBadRequest", err)
	}
	wmA, _ := a.m.Watermarks(sg)
	asA := []datastore.LogEntry{{Origin: a.id, Seq: wmA[a.id] + 1, Blob: &datastore.BlobAnnouncement{Ref: ref(8), Holder: a.id}}}
	if _, err := a.m.HandleAnnounce(t.Context(), sg, b.id, asA); !errors.Is(err, protocol.ErrBadRequest) {
		t.Fatalf("another member's entry pushed by a member: %v, want ErrBadRequest", err)
	}
	// A member admitting someone the ACL does not: not applied.
	wmB, _ := b.m.Watermarks(sg)
	sneaky := []datastore.LogEntry{{Origin: b.id, Seq: wmB[b.id] + 1, Member: &datastore.Member{Peer: stranger.id}}}
	if got, _ := a.m.HandleAnnounce(t.Context(), sg, b.id, sneaky); got != 0 {
		t.Fatal("a member admitted a peer the ACL refuses")
	}
	after, _ := a.m.Watermarks(sg)
	if !maps(before, after) || a.m.IsMember(sg, stranger.id) || a.signpost(t, ref(7)).HasSyncgroup(sg) {
		t.Fatalf("state changed: watermarks %v → %v", before, after)
	}
	if _, err := a.m.HandleAnnounce(t.Context(), "/blobsync/sg/other", b.id, nil); !errors.Is(err, protocol.ErrUnknownSyncgroup) {
		t.Fatalf("unknown group: %v", err)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	n := newNetwork()
	a := n.add(t)
	if _, err := a.m.Create(t.Context(), "family", datastore.ACL{Open: true}, datastore.RoleNormal); !errors.Is(err, datastore.ErrBadSyncgroupID) {
		t.Fatalf("bad ID: %v", err)
	}
	if _, err := a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.Role(9)); err == nil {
		t.Fatal("invalid role accepted")
	}
	if err := a.m.Announce(t.Context(), sg, []datastore.BlobAnnouncement{{Ref: ref(1), Holder: a.id}}); !errors.Is(err, protocol.ErrUnknownSyncgroup) {
		t.Fatalf("announce into an unknown group: %v", err)
	}
	if _, err := a.m.Join(t.Context(), "/blobsync/sg/x y", a.id, datastore.RoleNormal); !errors.Is(err, datastore.ErrBadSyncgroupID) {
		t.Fatalf("join with a bad ID: %v", err)
	}
	if groups, _ := a.meta.Groups(t.Context()); len(groups) != 0 {
		t.Fatalf("bad input stored %d groups", len(groups))
	}
	a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal)
	if _, err := a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v", err)
	}
}

func TestRestartRestoresGroupsAndWatermarks(t *testing.T) {
	n := newNetwork()
	a, b := n.add(t), n.add(t)
	a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleServer)
	b.m.Join(t.Context(), sg, a.id, datastore.RoleNormal)
	a.m.Announce(t.Context(), sg, []datastore.BlobAnnouncement{{Ref: ref(1), Holder: a.id}})
	eventually(t, "b to get the announcement", func() bool { return b.signpost(t, ref(1)).HasSyncgroup(sg) })
	wm, _ := b.m.Watermarks(sg)
	before, _ := b.m.Group(sg)
	b.m.Close()

	b2 := n.addWith(t, b.id, b.meta) // restart over the same datastore
	after, err := b2.m.Group(sg)
	if err != nil || !slices.Equal(memberIDs(after), memberIDs(before)) || after.MyRole != before.MyRole {
		t.Fatalf("after restart: %+v, %v", after, err)
	}
	wm2, _ := b2.m.Watermarks(sg)
	if !maps(wm, wm2) || !b2.served[sg] {
		t.Fatalf("watermarks %v → %v, served %v", wm, wm2, b2.served)
	}
	if role, _ := b2.m.Role(sg, a.id); role != datastore.RoleServer {
		t.Fatalf("a's role after restart: %v", role)
	}
}

func TestRestartOnNewAddressAnnouncesIt(t *testing.T) {
	n := newNetwork()
	a, b := n.add(t), n.add(t)
	a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal)
	b.m.Join(t.Context(), sg, a.id, datastore.RoleNormal)
	b.m.Close()

	moved := ma.StringCast("/ip4/127.0.0.1/tcp/9999")
	n.mu.Lock()
	n.addrs[b.id] = moved
	n.mu.Unlock()
	n.addWith(t, b.id, b.meta)
	eventually(t, "a to learn b's new address", func() bool {
		g, _ := a.m.Group(sg)
		mb, ok := g.Member(b.id)
		return ok && len(mb.Addrs) == 1 && mb.Addrs[0].Equal(moved)
	})
}

func TestLargeAnnouncementIsPushedInBatches(t *testing.T) {
	n := newNetwork()
	a, b := n.add(t), n.add(t)
	a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal)
	b.m.Join(t.Context(), sg, a.id, datastore.RoleNormal)
	var anns []datastore.BlobAnnouncement
	for i := range 2*protocol.MaxAnnounceEntries + 1 {
		anns = append(anns, datastore.BlobAnnouncement{Ref: ref(i), Holder: a.id})
	}
	if err := a.m.Announce(t.Context(), sg, anns); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to hold all", func() bool { return b.signpost(t, ref(2*protocol.MaxAnnounceEntries)).HasSyncgroup(sg) })
	n.mu.Lock()
	defer n.mu.Unlock()
	if want := []int{protocol.MaxAnnounceEntries, protocol.MaxAnnounceEntries, 1}; !slices.Equal(n.batches, want) {
		t.Fatalf("pushed batches %v, want %v", n.batches, want)
	}
}

// An entry pushed while a pull is reading the log, past a gap that pull will
// fill, is not lost: the pull it asks for runs once the first ends, instead
// of being dropped as a duplicate.
func TestGapWhileAPullRunsIsPulledAgain(t *testing.T) {
	n := newNetwork()
	a, b := n.add(t), n.add(t)
	a.m.Create(t.Context(), sg, datastore.ACL{Open: true}, datastore.RoleNormal)
	b.m.Join(t.Context(), sg, a.id, datastore.RoleNormal)
	n.setOffline(b.id, true) // b misses these three pushes
	for i := range 3 {
		a.m.Announce(t.Context(), sg, []datastore.BlobAnnouncement{{Ref: ref(i), Holder: a.id}})
	}
	n.setOffline(b.id, false)

	read, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	letGo := func() { released.Do(func() { close(release) }) }
	t.Cleanup(letGo) // a failed test must not leave the pull waiting
	n.mu.Lock()
	n.afterPull = func(from, to peer.ID) {
		if from == b.id && to == a.id {
			once.Do(func() { close(read); <-release })
		}
	}
	n.mu.Unlock()
	b.m.PeerConnected(a.id) // the first pull reads a's three entries, then waits
	<-read
	// A fourth, reaching b now, lies past the gap the waiting pull fills.
	n.setOffline(b.id, true) // the test delivers it itself
	a.m.Announce(t.Context(), sg, []datastore.BlobAnnouncement{{Ref: ref(3), Holder: a.id}})
	all, err := a.meta.LogEntries(t.Context(), sg, a.id, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.m.HandleAnnounce(t.Context(), sg, a.id, all[len(all)-1:]); err != nil || got != 0 {
		t.Fatalf("an entry past a gap: applied %d, %v", got, err)
	}
	n.setOffline(b.id, false)
	letGo()

	wmA, _ := a.m.Watermarks(sg)
	eventually(t, "b to hold every entry of a", func() bool { w, _ := b.m.Watermarks(sg); return w[a.id] == wmA[a.id] })
	if !b.signpost(t, ref(3)).HasSyncgroup(sg) {
		t.Fatal("the entry pushed during the pull never reached b's signposts")
	}
}
