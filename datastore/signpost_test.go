package datastore

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func loc(p string, ago int, server, proxy bool) Location {
	return Location{Peer: peer.ID(p), WhenSeen: t0.Add(-time.Duration(ago) * time.Minute), IsServer: server, IsProxy: proxy}
}

func peers(sp Signpost) []string {
	var out []string
	for _, l := range sp.Locations {
		out = append(out, string(l.Peer))
	}
	return out
}

func TestMergeOrdersServersProxiesNewestAndCaps(t *testing.T) {
	var sp Signpost
	changed := sp.Merge(Signpost{Locations: []Location{
		loc("old-normal", 50, false, false),
		loc("new-normal", 1, false, false),
		loc("proxy", 40, false, true),
		loc("server-old", 30, true, false),
		loc("server-new", 20, true, false),
		loc("mid-normal", 10, false, false),
	}})
	if !changed {
		t.Fatal("Merge into empty reported no change")
	}
	want := []string{"server-new", "server-old", "proxy", "new-normal"}
	if got := peers(sp); !slices.Equal(got, want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
	if len(sp.Locations) != MaxLocations {
		t.Fatalf("%d locations, cap is %d", len(sp.Locations), MaxLocations)
	}
}

func TestMergeKeepsNewestEntryPerPeer(t *testing.T) {
	sp := Signpost{Locations: []Location{loc("a", 10, false, false)}}
	if sp.Merge(Signpost{Locations: []Location{loc("a", 20, true, false)}}) {
		t.Fatal("an older entry for a known peer changed the signpost")
	}
	if sp.Locations[0].IsServer {
		t.Fatal("older entry overwrote newer")
	}
	if !sp.Merge(Signpost{Locations: []Location{loc("a", 5, true, false)}}) {
		t.Fatal("a newer entry was not taken")
	}
	if !sp.Locations[0].IsServer || !sp.Locations[0].WhenSeen.Equal(t0.Add(-5*time.Minute)) {
		t.Fatalf("entry = %+v", sp.Locations[0])
	}
	if sp.Merge(Signpost{Locations: []Location{loc("a", 5, true, false)}}) {
		t.Fatal("merging an identical entry reported a change")
	}
}

func TestMergeNeverTakesFetchAttempts(t *testing.T) {
	sp := Signpost{FetchAttempts: 3}
	sp.Merge(Signpost{FetchAttempts: 99, SgIDs: []string{"/blobsync/sg/a"}})
	if sp.FetchAttempts != 3 {
		t.Fatalf("FetchAttempts = %d after merge, want 3", sp.FetchAttempts)
	}
	var fresh Signpost
	fresh.Merge(Signpost{FetchAttempts: 7})
	if fresh.FetchAttempts != 0 {
		t.Fatalf("FetchAttempts taken from peer: %d", fresh.FetchAttempts)
	}
}

func TestMergeSyncgroupsSortedUniqueCapped(t *testing.T) {
	var sp Signpost
	sp.Merge(Signpost{SgIDs: []string{"/blobsync/sg/b", "/blobsync/sg/a"}})
	if sp.Merge(Signpost{SgIDs: []string{"/blobsync/sg/a"}}) {
		t.Fatal("known syncgroup reported as change")
	}
	sp.Merge(Signpost{SgIDs: []string{"/blobsync/sg/c"}})
	if want := []string{"/blobsync/sg/a", "/blobsync/sg/b", "/blobsync/sg/c"}; !slices.Equal(sp.SgIDs, want) {
		t.Fatalf("SgIDs = %v, want %v", sp.SgIDs, want)
	}
	var many []string
	for i := range 200 {
		many = append(many, "/blobsync/sg/"+string(rune('a'+i%26))+time.Duration(i).String())
	}
	sp.Merge(Signpost{SgIDs: many})
	if len(sp.SgIDs) != MaxSignpostSyncgroups {
		t.Fatalf("%d syncgroups, cap is %d", len(sp.SgIDs), MaxSignpostSyncgroups)
	}
	if !slices.IsSorted(sp.SgIDs) {
		t.Fatal("SgIDs not sorted")
	}
}

func TestMergeIsOrderIndependentForDistinctPeers(t *testing.T) {
	a := Signpost{Locations: []Location{loc("p1", 3, false, false), loc("p2", 9, true, false), loc("p3", 1, false, false)}}
	b := Signpost{Locations: []Location{loc("p4", 2, false, true), loc("p5", 7, false, false), loc("p6", 4, true, false)}}
	var ab, ba Signpost
	ab.Merge(a)
	ab.Merge(b)
	ba.Merge(b)
	ba.Merge(a)
	if !slices.Equal(peers(ab), peers(ba)) {
		t.Fatalf("merge order matters: %v vs %v", peers(ab), peers(ba))
	}
}

func TestFilter(t *testing.T) {
	sp := Signpost{
		Locations:     []Location{loc("member", 1, true, false), loc("stranger", 2, false, false)},
		SgIDs:         []string{"/blobsync/sg/mine", "/blobsync/sg/theirs"},
		FetchAttempts: 5,
	}
	keepSg := func(sg string) bool { return sg == "/blobsync/sg/mine" }
	keepPeer := func(p peer.ID) bool { return p == "member" }
	got := sp.Filter(keepSg, keepPeer)
	if !slices.Equal(got.SgIDs, []string{"/blobsync/sg/mine"}) || !slices.Equal(peers(got), []string{"member"}) || got.FetchAttempts != 0 {
		t.Fatalf("Filter = %+v", got)
	}
	none := sp.Filter(func(string) bool { return false }, func(peer.ID) bool { return true })
	if !none.IsZero() {
		t.Fatalf("Filter with no visible syncgroup = %+v, want zero", none)
	}
	if len(sp.SgIDs) != 2 || len(sp.Locations) != 2 {
		t.Fatal("Filter modified its receiver")
	}
}
