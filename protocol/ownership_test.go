package protocol

import (
	"bytes"
	"errors"
	"maps"
	"testing"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
)

const ownSG = "/blobsync/sg/own"

func TestGetBlobCarriesTheOfferAndAcceptRoundTrips(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 10_000)
	ref := a.put(t, data, true)
	a.policy.offers = map[datastore.Ref]map[string]int32{ref: {ownSG: 2}}
	a.policy.keeping = false
	b := newFetching(t, a.h, false)

	got, err := b.client.Fetch(t.Context(), a.h.ID(), ref, b.store, GetOptions{Distance: map[string]uint32{ownSG: 0}})
	if err != nil || got.Size != 10_000 || !maps.Equal(got.Offered, map[string]int32{ownSG: 2}) {
		t.Fatalf("Fetch = %+v, %v", got, err)
	}
	granted, keeping, err := b.client.AcceptBlobOwnership(t.Context(), a.h.ID(), ref, map[string]int32{ownSG: 5})
	if err != nil || !maps.Equal(granted, map[string]int32{ownSG: 2}) || keeping {
		t.Fatalf("Accept = %v, %v, %v; want the 2 shares there were, not keeping", granted, keeping, err)
	}
	if len(a.policy.accepts) != 1 || a.policy.accepts[0].caller != b.h.ID() || a.policy.accepts[0].taken[ownSG] != 5 {
		t.Fatalf("server recorded %+v", a.policy.accepts)
	}
	// One grant per transfer: acknowledging it again (a recipient that
	// crashed before recording the grant) repeats the answer and grants
	// nothing more.
	granted, keeping, err = b.client.AcceptBlobOwnership(t.Context(), a.h.ID(), ref, map[string]int32{ownSG: 5})
	if err != nil || !maps.Equal(granted, map[string]int32{ownSG: 2}) || keeping {
		t.Fatalf("a second acknowledgement of one transfer = %v, %v, %v; want the first answer again", granted, keeping, err)
	}
	if len(a.policy.accepts) != 1 {
		t.Fatalf("the policy saw %d acknowledgements of one transfer, want 1", len(a.policy.accepts))
	}
	// An acknowledgement with nothing taken, after a new transfer, is still one.
	b.store.Delete(ref)
	if _, err := b.client.Fetch(t.Context(), a.h.ID(), ref, b.store, GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if granted, _, err := b.client.AcceptBlobOwnership(t.Context(), a.h.ID(), ref, nil); err != nil || len(granted) != 0 {
		t.Fatalf("empty accept: %v, %v", granted, err)
	}
}

func TestAcceptWithoutATransferIsRefused(t *testing.T) {
	a := newServing(t, false)
	ref := a.put(t, randomBytes(t, 100), true)
	b := newFetching(t, a.h, false)
	if _, _, err := b.client.AcceptBlobOwnership(t.Context(), a.h.ID(), ref, map[string]int32{ownSG: 1}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("an acknowledgement with no transfer: %v, want ErrBadRequest", err)
	}
	// A transfer that did not reach the end does not count either.
	var w bytes.Buffer
	if _, _, err := b.getBlob(t.Context(), a.h.ID(), ref, 0, &w); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.client.AcceptBlobOwnership(t.Context(), a.h.ID(), ref, nil); err != nil {
		t.Fatalf("after a complete GetBlob: %v", err)
	}
	if len(a.policy.accepts) != 1 {
		t.Fatalf("the policy saw %d acknowledgements, want 1", len(a.policy.accepts))
	}
}

func TestAcceptIsAnsweredOnlyToWhoMayHaveTheBlob(t *testing.T) {
	a := newServing(t, false)
	private := a.put(t, randomBytes(t, 100), false)
	b := newFetching(t, a.h, false)
	if _, _, err := b.client.AcceptBlobOwnership(t.Context(), a.h.ID(), private, map[string]int32{ownSG: 1}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("accept of a blob the caller may not have: %v, want ErrNotFound", err)
	}
	if len(a.policy.accepts) != 0 {
		t.Fatal("the policy recorded an unauthorized accept")
	}
}

func TestBadShareMapsAreRefused(t *testing.T) {
	a := newServing(t, false)
	ref := a.put(t, randomBytes(t, 100), true)
	caller := newHost(t, false)
	for name, req := range map[string]*pb.Request{
		"negative shares":     {Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: ref.Bytes(), SharesTaken: map[string]int32{ownSG: -1}},
		"huge shares":         {Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: ref.Bytes(), SharesTaken: map[string]int32{ownSG: MaxShares + 1}},
		"bad syncgroup":       {Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: ref.Bytes(), SharesTaken: map[string]int32{"/x": 1}},
		"bad distance group":  {Op: pb.Op_GET_BLOB, Ref: ref.Bytes(), Distance: map[string]uint32{"nope": 0}},
		"too many syncgroups": {Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: ref.Bytes(), SharesTaken: manyGroups(datastore.MaxSignpostSyncgroups + 1)},
	} {
		raw, err := rawCall(t, caller, a.h, frame(t, req))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var resp pb.Response
		if err := readMsg(bytes.NewReader(raw), &resp, MaxResponseSize); err != nil || resp.Status != pb.Status_BAD_REQUEST {
			t.Errorf("%s: %v (%v), want BAD_REQUEST", name, &resp, err)
		}
	}
	if len(a.policy.accepts) != 0 || a.srv.Stats().BytesSent != 0 {
		t.Fatal("a refused request changed state")
	}
}

func manyGroups(n int) map[string]int32 {
	m := map[string]int32{}
	for i := range n {
		m[ownSG+string(rune('a'+i%26))+string(rune('a'+i/26))] = 1
	}
	return m
}

func TestLyingOwnershipAnswersAreRejected(t *testing.T) {
	data := randomBytes(t, 100)
	ref := datastore.RefOf(data)
	for name, resp := range map[string]*pb.Response{
		"grants more than taken": {Status: pb.Status_OK, SharesGranted: map[string]int32{ownSG: 3}},
		"grants negative":        {Status: pb.Status_OK, SharesGranted: map[string]int32{ownSG: -2}},
	} {
		h := newHost(t, false)
		fakeServer(t, h, func(st network.Stream, _ *pb.Request) { writeMsg(st, resp); st.Close() })
		b := newFetching(t, h, false)
		if _, _, err := b.client.AcceptBlobOwnership(t.Context(), h.ID(), ref, map[string]int32{ownSG: 1}); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", name, err)
		}
	}
	h := newHost(t, false)
	fakeServer(t, h, func(st network.Stream, _ *pb.Request) {
		writeMsg(st, &pb.Response{Status: pb.Status_OK, Size: 100, SharesOffered: map[string]int32{"bad": 1}})
		st.Write(data)
		st.Close()
	})
	b := newFetching(t, h, false)
	if _, err := b.fetch(t.Context(), h.ID(), ref, nil); !errors.Is(err, ErrProtocol) {
		t.Fatalf("an offer for a malformed syncgroup: %v, want ErrProtocol", err)
	}
}
