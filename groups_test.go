package blobsync

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
)

const testSG = "/blobsync/sg/test"

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func signpostOn(t *testing.T, n *Node, ref Ref) datastore.Signpost {
	t.Helper()
	sp, _, err := n.meta.Signpost(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func TestGroupBlobsServedToMembersOnly(t *testing.T) {
	a, member, stranger := newNode(t), newNode(t), newNode(t)
	if _, err := a.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, RoleNormal); err != nil {
		t.Fatal(err)
	}
	if _, err := member.JoinSyncgroup(t.Context(), testSG, addrInfo(a), RoleServer); err != nil {
		t.Fatal(err)
	}
	data := random(t, 200_000)
	ref, _, err := a.Put(t.Context(), bytes.NewReader(data), PutOptions{Syncgroups: []string{testSG}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the announcement", func() bool { return signpostOn(t, member, ref).HasSyncgroup(testSG) })
	if size, err := member.Fetch(t.Context(), ref, FetchOptions{}); err != nil || size != int64(len(data)) {
		t.Fatalf("member's Fetch with no From = %d, %v", size, err)
	}
	if !bytes.Equal(readAll(t, member, ref), data) {
		t.Fatal("member's copy differs")
	}
	_, err = stranger.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(a), addrInfo(member)}})
	if !errors.Is(err, ErrNoLocation) || !errors.Is(err, protocol.ErrNotFound) {
		t.Fatalf("stranger's Fetch: %v; want ErrNoLocation wrapping ErrNotFound", err)
	}
	if sp := signpostOn(t, stranger, ref); !sp.IsZero() {
		t.Fatalf("the stranger learned a signpost: %+v", sp)
	}
	// The member that fetched it serves it to members too: a's copy is not needed.
	if role, ok := a.groups.Role(testSG, member.h.ID()); !ok || role != RoleServer {
		t.Fatalf("a sees the member as %v, %v", role, ok)
	}
}

func TestLocateFollowsSignpostOfPeerWithoutBlob(t *testing.T) {
	holder, relay, seeker := newNode(t), newNode(t), newNode(t)
	holder.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, RoleNormal)
	relay.JoinSyncgroup(t.Context(), testSG, addrInfo(holder), RoleNormal)
	seeker.JoinSyncgroup(t.Context(), testSG, addrInfo(relay), RoleNormal)
	data := random(t, 50_000)
	ref, _, _ := holder.Put(t.Context(), bytes.NewReader(data), PutOptions{})
	// The relay learns of the blob from the embedding server's own sync.
	if err := relay.ProcessBlobRefs(t.Context(), testSG, holder.h.ID(), []Ref{ref}); err != nil {
		t.Fatal(err)
	}
	sp := signpostOn(t, relay, ref)
	if !sp.HasSyncgroup(testSG) || len(sp.Locations) != 1 || sp.Locations[0].Peer != holder.h.ID() {
		t.Fatalf("relay's signpost after ProcessBlobRefs: %+v", sp)
	}
	// The holder's blob was not put into the group, so it serves it only once
	// it learns the ref there too.
	holder.ProcessBlobRefs(t.Context(), testSG, holder.h.ID(), []Ref{ref})

	// Once both announcements reached the seeker, forget them: the seeker asks
	// only the relay, which lacks the blob and answers with its signpost.
	waitFor(t, "both announcements", func() bool {
		w, _ := seeker.groups.Watermarks(testSG)
		for _, origin := range []*Node{relay, holder} {
			own, _ := origin.groups.Watermarks(testSG)
			if w[origin.h.ID()] != own[origin.h.ID()] {
				return false
			}
		}
		return true
	})
	seeker.meta.DeleteSignpost(t.Context(), ref)
	size, err := seeker.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(relay)}})
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Fetch through the relay's signpost = %d, %v", size, err)
	}
	if sp := signpostOn(t, seeker, ref); !slices.ContainsFunc(sp.Locations, func(l datastore.Location) bool { return l.Peer == holder.h.ID() }) {
		t.Fatalf("seeker did not merge the relay's signpost: %+v", sp)
	}
}

func TestPutIntoUnknownSyncgroupChangesNothing(t *testing.T) {
	n := newNode(t)
	_, _, err := n.Put(t.Context(), bytes.NewReader([]byte("x")), PutOptions{Syncgroups: []string{testSG}})
	if !errors.Is(err, ErrUnknownSyncgroup) {
		t.Fatalf("Put into an unknown group: %v", err)
	}
	if list, _ := n.List(t.Context()); len(list) != 0 {
		t.Fatalf("blob stored: %v", list)
	}
	if _, _, err := n.Put(t.Context(), bytes.NewReader([]byte("x")), PutOptions{Syncgroups: []string{"bad"}}); !errors.Is(err, datastore.ErrBadSyncgroupID) && !errors.Is(err, ErrUnknownSyncgroup) {
		t.Fatalf("Put into a malformed group ID: %v", err)
	}
	if err := n.ProcessBlobRefs(t.Context(), testSG, n.h.ID(), []Ref{datastore.RefOf([]byte("x"))}); !errors.Is(err, ErrUnknownSyncgroup) {
		t.Fatalf("ProcessBlobRefs for an unknown group: %v", err)
	}
}

// TestSignpostsAreFilteredToTheCallersGroups: a member of X asking about a
// blob learned in X and Y sees only X, and only locations that are X members.
func TestSignpostsAreFilteredToTheCallersGroups(t *testing.T) {
	a, inX, inY, stranger := newNode(t), newNode(t), newNode(t), newNode(t)
	const x, y = "/blobsync/sg/x", "/blobsync/sg/y"
	a.CreateSyncgroup(t.Context(), x, ACL{Open: true}, RoleNormal)
	a.CreateSyncgroup(t.Context(), y, ACL{Open: true}, RoleNormal)
	for _, j := range []struct {
		n  *Node
		sg string
	}{{inX, x}, {inY, y}} {
		if _, err := j.n.JoinSyncgroup(t.Context(), j.sg, addrInfo(a), RoleNormal); err != nil {
			t.Fatal(err)
		}
	}
	stranger.addAddrs(addrInfo(a))
	ref := datastore.RefOf([]byte("in both groups"))
	now := time.Now()
	a.meta.UpdateSignpost(t.Context(), ref, func(sp *datastore.Signpost) bool {
		return sp.Merge(datastore.Signpost{
			SgIDs:         []string{x, y},
			Locations:     []datastore.Location{{Peer: inX.h.ID(), WhenSeen: now, IsServer: true}, {Peer: inY.h.ID(), WhenSeen: now}},
			FetchAttempts: 3,
		})
	})
	for _, tc := range []struct {
		caller *Node
		sgs    []string
		locs   []peer.ID
	}{
		{inX, []string{x}, []peer.ID{inX.h.ID()}},
		{inY, []string{y}, []peer.ID{inY.h.ID()}},
		{stranger, nil, nil},
	} {
		have, err := tc.caller.client.HaveBlob(t.Context(), a.h.ID(), ref)
		if err != nil || have.Held {
			t.Fatalf("HaveBlob: %+v, %v", have, err)
		}
		var locs []peer.ID
		for _, l := range have.Signpost.Locations {
			locs = append(locs, l.Peer)
		}
		if !slices.Equal(have.Signpost.SgIDs, tc.sgs) || !slices.Equal(locs, tc.locs) || have.Signpost.FetchAttempts != 0 {
			t.Errorf("caller %s sees %+v; want groups %v, locations %v", tc.caller.h.ID(), have.Signpost, tc.sgs, tc.locs)
		}
	}
}
