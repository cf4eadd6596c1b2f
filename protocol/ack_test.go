package protocol

import (
	"bytes"
	"io"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
)

// countStreams makes s count the blob protocol streams it is opened.
func countStreams(s *serving) *atomic.Int32 {
	var n atomic.Int32
	s.h.SetStreamHandler(ID, func(st network.Stream) { n.Add(1); s.srv.handle(st) })
	return &n
}

// A Fetch with Take acknowledges on the stream the blob came on: one stream
// for the fetch and its acknowledgement, the policy told once, the grant
// returned.
func TestFetchAcknowledgesOnTheGetBlobStream(t *testing.T) {
	a := newServing(t, false)
	streams := countStreams(a)
	data := randomBytes(t, 4096)
	ref := a.put(t, data, true)
	a.policy.offers = map[datastore.Ref]map[string]int32{ref: {ownSG: 2}}
	b := newFetching(t, a.h, false)

	var offeredSeen map[string]int32
	got, err := b.client.Fetch(t.Context(), a.h.ID(), ref, b.store, GetOptions{Take: func(offered map[string]int32) map[string]int32 {
		offeredSeen = offered
		return map[string]int32{ownSG: 2}
	}})
	if err != nil || got.Ack.Err != nil {
		t.Fatalf("Fetch = %+v, %v", got, err)
	}
	if !maps.Equal(offeredSeen, map[string]int32{ownSG: 2}) || !maps.Equal(got.Ack.Granted, map[string]int32{ownSG: 2}) || got.Ack.Keeping {
		t.Fatalf("Take saw %v; granted %v keeping %v; want 2 shares offered and granted, not keeping", offeredSeen, got.Ack.Granted, got.Ack.Keeping)
	}
	if !bytes.Equal(b.held(t, ref), data) {
		t.Fatal("the fetched bytes differ")
	}
	if n := streams.Load(); n != 1 {
		t.Fatalf("the fetch and its acknowledgement took %d streams, want 1", n)
	}
	if len(a.policy.accepts) != 1 || a.policy.accepts[0].caller != b.h.ID() {
		t.Fatalf("the policy saw %+v", a.policy.accepts)
	}
	// Without Take nothing is acknowledged, and the server's handler ends
	// when the fetcher closes its side: no handler left waiting.
	c := newFetching(t, a.h, false)
	if got, err := c.client.Fetch(t.Context(), a.h.ID(), ref, c.store, GetOptions{}); err != nil || got.Ack.Granted != nil {
		t.Fatalf("Fetch without Take = %+v, %v", got, err)
	}
	if len(a.policy.accepts) != 1 {
		t.Fatalf("a fetch without Take was acknowledged: %+v", a.policy.accepts)
	}
}

// A responder that closes the GetBlob stream after the bytes (as one that
// does not take acknowledgements there would) is acknowledged on a new
// stream.
func TestFetchAcknowledgesOnANewStreamIfTheResponderClosed(t *testing.T) {
	data := randomBytes(t, 4096)
	ref := datastore.RefOf(data)
	h := newHost(t, false)
	var acks atomic.Int32
	fakeServer(t, h, func(st network.Stream, req *pb.Request) {
		switch req.Op {
		case pb.Op_GET_BLOB:
			writeMsg(st, &pb.Response{Status: pb.Status_OK, Size: uint64(len(data)), SharesOffered: map[string]int32{ownSG: 2}})
			st.Write(data)
		case pb.Op_ACCEPTED_BLOB_OWNERSHIP:
			acks.Add(1)
			writeMsg(st, &pb.Response{Status: pb.Status_OK, SharesGranted: req.SharesTaken})
		}
		st.Close()
	})
	b := newFetching(t, h, false)
	got, err := b.client.Fetch(t.Context(), h.ID(), ref, b.store, GetOptions{Take: func(o map[string]int32) map[string]int32 { return o }})
	if err != nil || got.Ack.Err != nil || !maps.Equal(got.Ack.Granted, map[string]int32{ownSG: 2}) {
		t.Fatalf("Fetch = %+v, %v; want the 2 shares granted", got, err)
	}
	if acks.Load() != 1 {
		t.Fatalf("%d acknowledgements on new streams, want 1", acks.Load())
	}
}

// What follows a GetBlob on its stream must be the acknowledgement of that
// blob: anything else is refused and grants nothing; a fetcher that sends
// nothing and keeps the stream open is cut off at the request timeout.
func TestOnlyTheBlobsAcknowledgementMayFollowGetBlob(t *testing.T) {
	a := newServing(t, false, RequestTimeout(500*time.Millisecond))
	data := randomBytes(t, 1000)
	ref := a.put(t, data, true)
	other := a.put(t, randomBytes(t, 1000), true)
	a.policy.offers = map[datastore.Ref]map[string]int32{ref: {ownSG: 2}, other: {ownSG: 2}}
	caller := newHost(t, false)
	introduce(caller, a.h)

	// getThen sends GetBlob of ref, reads the blob, then sends next (if any)
	// and returns what came back after the blob.
	getThen := func(next []byte) ([]byte, error) {
		st, err := caller.NewStream(t.Context(), a.h.ID(), ID)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := st.Write(frame(t, &pb.Request{Op: pb.Op_GET_BLOB, Ref: ref.Bytes()})); err != nil {
			t.Fatal(err)
		}
		var resp pb.Response
		if err := readMsg(st, &resp, MaxResponseSize); err != nil || resp.Status != pb.Status_OK {
			t.Fatalf("GetBlob: %v, %v", &resp, err)
		}
		if _, err := io.ReadFull(st, make([]byte, len(data))); err != nil {
			t.Fatal(err)
		}
		if next != nil {
			st.Write(next)
			st.CloseWrite()
		}
		return io.ReadAll(st)
	}
	for name, req := range map[string]*pb.Request{
		"another blob's acknowledgement": {Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: other.Bytes(), SharesTaken: map[string]int32{ownSG: 2}},
		"a second GetBlob":               {Op: pb.Op_GET_BLOB, Ref: ref.Bytes()},
		"a HaveBlob":                     {Op: pb.Op_HAVE_BLOB, Ref: ref.Bytes()},
		"bad shares":                     {Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: ref.Bytes(), SharesTaken: map[string]int32{ownSG: -1}},
	} {
		raw, err := getThen(frame(t, req))
		var resp pb.Response
		if err != nil || readMsg(bytes.NewReader(raw), &resp, MaxResponseSize) != nil || resp.Status != pb.Status_BAD_REQUEST {
			t.Errorf("%s after GetBlob: %q (%v), want BAD_REQUEST", name, raw, err)
		}
	}
	// A malformed follow-up is answered, not reset: a reset could cost the
	// caller the blob's bytes it has not read yet.
	for name, raw := range map[string][]byte{"a cut varint": {0x80}, "a frame over the cap": {0xff, 0xff, 0x03}, "a short frame": {0x05, 1}} {
		got, err := getThen(raw)
		var resp pb.Response
		if err != nil || readMsg(bytes.NewReader(got), &resp, MaxResponseSize) != nil || resp.Status != pb.Status_BAD_REQUEST {
			t.Errorf("%s after GetBlob: %q (%v), want BAD_REQUEST", name, got, err)
		}
	}
	if len(a.policy.accepts) != 0 {
		t.Fatalf("refused follow-ups were acknowledged: %+v", a.policy.accepts)
	}
	start := time.Now()
	if _, err := getThen(nil); err == nil {
		t.Error("a fetcher that sent nothing after GetBlob was not cut off")
	}
	if waited := time.Since(start); waited > 8*time.Second {
		t.Fatalf("a fetcher that sent nothing held the handler %v; the request timeout is 500ms", waited)
	}
	// The transfers are still open to one acknowledgement on a new stream.
	c, err := NewClient(caller)
	if err != nil {
		t.Fatal(err)
	}
	if granted, _, err := c.AcceptBlobOwnership(t.Context(), a.h.ID(), ref, map[string]int32{ownSG: 2}); err != nil || granted[ownSG] != 2 {
		t.Fatalf("acknowledging on a new stream afterwards: %v, %v", granted, err)
	}
}
