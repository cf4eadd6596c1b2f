package blobsync

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
)

func shares(t *testing.T, n *Node, ref Ref) int32 {
	t.Helper()
	m, err := n.Shares(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	var sum int32
	for _, s := range m {
		sum += s
	}
	return sum
}

// group makes a device (role devRole) create testSG and the others join it
// with the given roles, and waits until the device knows them all.
func group(t *testing.T, device *Node, devRole Role, others map[*Node]Role) {
	t.Helper()
	if _, err := device.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, devRole); err != nil {
		t.Fatal(err)
	}
	for n, role := range others {
		if _, err := n.JoinSyncgroup(t.Context(), testSG, addrInfo(device), role); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the device to know every member", func() bool { g, _ := device.Syncgroup(testSG); return len(g.Members) == 1+len(others) })
}

func putIn(t *testing.T, n *Node, data []byte, sgs ...string) Ref {
	t.Helper()
	ref, _, err := n.Put(t.Context(), bytes.NewReader(data), PutOptions{Syncgroups: sgs})
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestSharesMoveToServersThenGCFreesTheDevice(t *testing.T) {
	device, s1, s2 := newNode(t), newNode(t), newNode(t)
	if _, err := device.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, RoleNormal); err != nil {
		t.Fatal(err)
	}
	ref := putIn(t, device, random(t, 100_000), testSG)
	pinned := putIn(t, device, random(t, 50_000), testSG)
	if err := device.Pin(t.Context(), pinned); err != nil {
		t.Fatal(err)
	}
	if got := shares(t, device, ref); got != datastore.InitialShares {
		t.Fatalf("device holds %d shares after the put, want %d", got, datastore.InitialShares)
	}
	if res, err := device.GC(t.Context()); err != nil || len(res.Dropped) != 0 {
		t.Fatalf("GC before any server has the blob: %+v, %v", res, err)
	}

	for _, s := range []*Node{s1, s2} {
		if _, err := s.JoinSyncgroup(t.Context(), testSG, addrInfo(device), RoleServer); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*Node{s1, s2} {
		waitFor(t, "both servers to finish", func() bool {
			_, ok, _ := s.Has(ref)
			_, ok2, _ := s.Has(pinned)
			return ok && ok2 && idle(s)
		})
	}
	for _, r := range []Ref{ref, pinned} {
		if d, a, b := shares(t, device, r), shares(t, s1, r), shares(t, s2, r); d != 0 || a+b != datastore.InitialShares {
			t.Fatalf("shares after two servers fetched: device %d, servers %d+%d; want 0 and %d in all", d, a, b, datastore.InitialShares)
		}
	}
	res, err := device.GC(t.Context())
	if err != nil || len(res.Dropped) != 1 || res.Dropped[0].Ref != ref || res.Freed != 100_000 {
		t.Fatalf("GC after the servers took the shares: %+v, %v", res, err)
	}
	if _, held, _ := device.Has(ref); held {
		t.Fatal("the device still holds the blob it gave away")
	}
	if _, held, _ := device.Has(pinned); !held {
		t.Fatal("GC dropped a pinned blob")
	}
	// The servers own theirs: their GC keeps everything.
	for _, s := range []*Node{s1, s2} {
		if res, _ := s.GC(t.Context()); len(res.Dropped) != 0 {
			t.Fatalf("a server dropped %d blobs", len(res.Dropped))
		}
	}
	// A new member still gets the blob, from a server.
	late := newNode(t)
	if _, err := late.JoinSyncgroup(t.Context(), testSG, addrInfo(s1), RoleNormal); err != nil {
		t.Fatal(err)
	}
	if size, err := late.Fetch(t.Context(), ref, FetchOptions{}); err != nil || size != 100_000 {
		t.Fatalf("a new member's fetch after the device dropped its copy: %d, %v", size, err)
	}
	// Unpinning makes the pinned one collectable too.
	device.Unpin(t.Context(), pinned)
	if res, _ := device.GC(t.Context()); len(res.Dropped) != 1 || res.Dropped[0].Ref != pinned {
		t.Fatalf("GC after unpin: %+v", res)
	}
}

// TestConcurrentServerFetchesConserveShares: two servers fetch each blob at
// the same moment; the device's 2 shares end up somewhere, never doubled.
func TestConcurrentServerFetchesConserveShares(t *testing.T) {
	device, s1, s2 := newNode(t), newNode(t), newNode(t)
	group(t, device, RoleNormal, map[*Node]Role{s1: RoleNormal, s2: RoleNormal})
	// s1 and s2 are normal members, so nothing fetches by itself; each
	// blob is then fetched by both at once, as servers would.
	promote := func(n *Node) {
		if _, err := n.JoinSyncgroup(t.Context(), testSG, addrInfo(device), RoleServer); err != nil {
			t.Fatal(err)
		}
	}
	var refs []Ref
	for i := range 20 {
		refs = append(refs, putIn(t, device, fmt.Appendf(random(t, 20_000), "%d", i), testSG))
	}
	for _, n := range []*Node{s1, s2} {
		waitFor(t, "the announcements", func() bool { return signpostOn(t, n, refs[19]).HasSyncgroup(testSG) })
	}
	// Promote both quietly: their rescans race each other on every blob.
	var wg sync.WaitGroup
	wg.Go(func() { promote(s1) })
	wg.Go(func() { promote(s2) })
	wg.Wait()
	for _, r := range refs {
		for _, n := range []*Node{s1, s2} {
			waitFor(t, "both servers to hold every blob", func() bool { _, ok, _ := n.Has(r); return ok && idle(n) })
		}
	}
	for i, r := range refs {
		if total := shares(t, device, r) + shares(t, s1, r) + shares(t, s2, r); total != datastore.InitialShares {
			t.Fatalf("blob %d: %d shares in all after concurrent fetches, want %d", i, total, datastore.InitialShares)
		}
	}
}

// TestCrashBeforeAcceptLeavesAnOwner: a receiver that verified a blob but
// never acknowledged it (it crashed) leaves the sender owning and keeping it.
func TestCrashBeforeAcceptLeavesAnOwner(t *testing.T) {
	device, server := newNode(t), newNode(t)
	group(t, device, RoleNormal, map[*Node]Role{server: RoleNormal})
	ref := putIn(t, device, random(t, 30_000), testSG)
	// The server's protocol client fetches, verifies and stores the blob, and
	// the acknowledgement never happens, as if the process died right then.
	got, err := server.client.Fetch(t.Context(), device.h.ID(), ref, server.blobs, protocol.GetOptions{Distance: map[string]uint32{testSG: 0}})
	// Nearer to a server than the device, the receiver is offered a share...
	if err != nil || got.Offered[testSG] != 1 {
		t.Fatalf("fetch: %+v, %v", got, err)
	}
	// ...but an offer never acknowledged moves nothing.
	if d := shares(t, device, ref); d != datastore.InitialShares {
		t.Fatalf("the device lost shares without an acknowledgement: %d", d)
	}
	if res, _ := device.GC(t.Context()); len(res.Dropped) != 0 {
		t.Fatal("the device dropped a blob nobody acknowledged holding")
	}
}

func TestSharesAreCreatedOnce(t *testing.T) {
	device, other := newNode(t), newNode(t)
	group(t, device, RoleNormal, map[*Node]Role{other: RoleNormal})
	data := random(t, 10_000)
	ref := putIn(t, device, data, testSG)
	putIn(t, device, data, testSG) // again: no new shares
	if got := shares(t, device, ref); got != datastore.InitialShares {
		t.Fatalf("device has %d shares after putting twice", got)
	}
	// A member that learned the blob in the group and then puts the same
	// bytes there is not introducing it: no shares.
	waitFor(t, "the announcement", func() bool { return signpostOn(t, other, ref).HasSyncgroup(testSG) })
	putIn(t, other, data, testSG)
	if got := shares(t, other, ref); got != 0 {
		t.Fatalf("a member re-putting a known blob created %d shares", got)
	}
}

func TestHigherPriorityNormalPeerGetsOneShare(t *testing.T) {
	leaf, normal := newNode(t), newNode(t)
	group(t, leaf, RoleLeaf, map[*Node]Role{normal: RoleNormal})
	ref := putIn(t, leaf, random(t, 10_000), testSG)
	waitFor(t, "the announcement", func() bool { return signpostOn(t, normal, ref).HasSyncgroup(testSG) })
	if _, err := normal.Fetch(t.Context(), ref, FetchOptions{}); err != nil {
		t.Fatal(err)
	}
	if l, n := shares(t, leaf, ref), shares(t, normal, ref); l != 1 || n != 1 {
		t.Fatalf("leaf %d, normal %d shares; want one each", l, n)
	}
	// A peer of lower priority gets none: the leaf fetching from the normal one.
	ref2 := putIn(t, normal, random(t, 10_000), testSG)
	waitFor(t, "the announcement", func() bool { return signpostOn(t, leaf, ref2).HasSyncgroup(testSG) })
	if _, err := leaf.Fetch(t.Context(), ref2, FetchOptions{}); err != nil {
		t.Fatal(err)
	}
	if l, n := shares(t, leaf, ref2), shares(t, normal, ref2); l != 0 || n != datastore.InitialShares {
		t.Fatalf("leaf %d, normal %d shares; the leaf outranks nobody", l, n)
	}
}

func TestPutOutsideSyncgroupsIsPinned(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ref, _, _ := a.Put(t.Context(), bytes.NewReader(random(t, 1000)), PutOptions{Public: true})
	if _, err := b.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(a)}}); err != nil {
		t.Fatal(err)
	}
	if res, _ := a.GC(t.Context()); len(res.Dropped) != 0 {
		t.Fatal("GC dropped a blob put outside any syncgroup")
	}
	if err := b.Pin(t.Context(), datastore.RefOf([]byte("not held"))); err == nil {
		t.Fatal("pinning a blob not held succeeded")
	}
}

func TestStorageBudgetDropsUnownedCopiesOldestFirst(t *testing.T) {
	device, server := newNode(t, WithStorageBudget(250_000)), newNode(t)
	group(t, device, RoleNormal, map[*Node]Role{server: RoleServer})

	var refs []Ref
	for i := range 3 {
		refs = append(refs, putIn(t, device, fmt.Appendf(random(t, 100_000), "%d", i), testSG))
		waitFor(t, "the server to take it", func() bool { return shares(t, device, refs[i]) == 0 })
	}
	// 300 kB held against a 250 kB budget, all owned by the server now: the
	// next put triggers a collection of the oldest.
	putIn(t, device, random(t, 1000), testSG)
	waitFor(t, "the budget to be met", func() bool { _, held, _ := device.Has(refs[0]); return !held })
	if _, held, _ := device.Has(refs[2]); !held {
		t.Fatal("the budget dropped more than it needed")
	}
}

// TestAckWithoutFetchIsRefused: only a peer that fetched the blob from this
// one may acknowledge it, granted once per transfer (review finding: otherwise a
// member could drain the device's shares and let gc drop the only copy).
func TestAckWithoutFetchIsRefused(t *testing.T) {
	device, member := newNode(t), newNode(t)
	group(t, device, RoleLeaf, map[*Node]Role{member: RoleNormal}) // the member outranks the device
	ref := putIn(t, device, random(t, 10_000), testSG)
	for range 2 {
		if _, _, err := member.client.AcceptBlobOwnership(t.Context(), device.h.ID(), ref, map[string]int32{testSG: 2}); !errors.Is(err, protocol.ErrBadRequest) {
			t.Fatalf("an acknowledgement without a fetch: %v, want ErrBadRequest", err)
		}
	}
	if got := shares(t, device, ref); got != datastore.InitialShares {
		t.Fatalf("the device holds %d shares after bogus acknowledgements", got)
	}
	if res, _ := device.GC(t.Context()); len(res.Dropped) != 0 {
		t.Fatal("gc dropped the only copy")
	}
	// A real fetch is granted once: a second acknowledgement (as after a
	// crash before the grant was recorded) repeats the grant, taking nothing.
	waitFor(t, "the announcement", func() bool { return signpostOn(t, member, ref).HasSyncgroup(testSG) })
	if _, err := member.Fetch(t.Context(), ref, FetchOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := shares(t, member, ref); got != 1 {
		t.Fatalf("member took %d shares, want 1", got)
	}
	if granted, _, err := member.client.AcceptBlobOwnership(t.Context(), device.h.ID(), ref, map[string]int32{testSG: 1}); err != nil || granted[testSG] != 1 {
		t.Fatalf("a second acknowledgement of one transfer = %v, %v; want the 1 share granted before", granted, err)
	}
	if got := shares(t, device, ref); got != 1 {
		t.Fatalf("the device holds %d shares, want 1", got)
	}
}

// TestGCAsksHoldersFirst: a holder that dropped its copy since acknowledging
// it does not count: gc keeps the device's copy.
func TestGCAsksHoldersFirst(t *testing.T) {
	device, server := newNode(t), newNode(t)
	group(t, device, RoleNormal, map[*Node]Role{server: RoleServer})
	ref := putIn(t, device, random(t, 10_000), testSG)
	waitFor(t, "the server to take the shares", func() bool { return shares(t, device, ref) == 0 && idle(server) })
	if err := server.blobs.Delete(ref); err != nil { // lost, say, or dropped by hand
		t.Fatal(err)
	}
	if res, _ := device.GC(t.Context()); len(res.Dropped) != 0 {
		t.Fatal("gc dropped a copy whose only acknowledged holder no longer has it")
	}
}

// TestOnlyMembersCountAsHolders (review finding): anyone may fetch a public
// blob, but only a member of one of its syncgroups counts as a holder for gc.
func TestOnlyMembersCountAsHolders(t *testing.T) {
	device, stranger := newNode(t), newNode(t)
	device.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, RoleNormal)
	data := random(t, 5000)
	ref, _, err := device.Put(t.Context(), bytes.NewReader(data), PutOptions{Public: true, Syncgroups: []string{testSG}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(device)}}); err != nil {
		t.Fatal(err)
	}
	meta, _, _ := device.meta.BlobMeta(t.Context(), ref)
	if len(meta.Holders) != 0 {
		t.Fatalf("a non-member was recorded as a holder: %v", meta.Holders)
	}
}
