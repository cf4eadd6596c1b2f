package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

func seedFrames(f *testing.F, msgs ...proto.Message) {
	for _, m := range msgs {
		var buf bytes.Buffer
		if err := writeMsg(&buf, m); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte{})
	f.Add(binary.AppendUvarint(nil, 1<<63))
	f.Add(bytes.Repeat([]byte{0xff}, 11))
	f.Add([]byte{0x80, 0x00})
}

var fuzzRef = datastore.RefOf([]byte("fuzz"))

// FuzzRequest feeds arbitrary bytes to what a server decodes from a caller.
func FuzzRequest(f *testing.F) {
	seedFrames(f,
		&pb.Request{Op: pb.Op_GET_BLOB, Ref: fuzzRef.Bytes(), Offset: 12345},
		&pb.Request{Op: pb.Op_HAVE_BLOB, Ref: fuzzRef.Bytes()},
		&pb.Request{Op: 7, Ref: []byte("../x")},
		&pb.Request{Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: fuzzRef.Bytes(), SharesTaken: map[string]int32{"/blobsync/sg/a": 2, "bad": -1}},
		&pb.Request{Op: pb.Op_GET_BLOB, Ref: fuzzRef.Bytes(), Distance: map[string]uint32{"/blobsync/sg/a": 9}},
	)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		var req pb.Request
		if err := readMsg(r, &req, MaxRequestSize); err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("readMsg error %v is not ErrProtocol", err)
			}
			return
		}
		if consumed := len(b) - r.Len(); consumed > MaxRequestSize+binary.MaxVarintLen64 {
			t.Fatalf("consumed %d bytes past the cap", consumed)
		}
		if ref, err := datastore.RefFromBytes(req.GetRef()); err == nil && !bytes.Equal(ref.Bytes(), req.GetRef()) {
			t.Fatalf("ref %s accepted in non-canonical form %x", ref, req.GetRef())
		}
		if taken, err := sharesFromWire(req.GetSharesTaken()); err == nil {
			for sg, n := range taken {
				if n < 0 || n > MaxShares || datastore.CheckSyncgroupID(sg) != nil {
					t.Fatalf("accepted %d shares of %q", n, sg)
				}
			}
		}
		if d, err := distanceFromWire(req.GetDistance()); err == nil {
			for _, v := range d {
				if v > 2 {
					t.Fatalf("distance %d kept", v)
				}
			}
		}
	})
}

// FuzzResponse feeds arbitrary bytes to what a client decodes from a responder.
func FuzzResponse(f *testing.F) {
	p, _ := peer.Decode("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
	seedFrames(f,
		&pb.Response{Status: pb.Status_OK, Size: 1 << 20},
		&pb.Response{Status: pb.Status_NOT_FOUND, Signpost: &pb.Signpost{
			Locations: []*pb.Location{{Peer: []byte(p), WhenSeenUnixNano: 1, IsServer: true}, {Peer: []byte("junk")}},
			SgIds:     []string{"/blobsync/sg/a", "/blobsync/sg/a", "bad", "/blobsync/sg/\x00"},
		}},
		&pb.Response{Status: pb.Status_OFFSET_OUT_OF_RANGE, Size: 10},
		&pb.Response{Status: 99, Message: "\x1b[31mred"},
	)
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp pb.Response
		if err := readMsg(bytes.NewReader(b), &resp, MaxResponseSize); err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("readMsg error %v is not ErrProtocol", err)
			}
			return
		}
		if resp.GetStatus() != pb.Status_OK {
			if err := statusError(p, &resp); err == nil {
				t.Fatal("non-OK status mapped to no error")
			} else if bytes.ContainsAny([]byte(err.Error()), "\x1b\x00\n") {
				t.Fatalf("control characters in error %q", err)
			}
		}
		for _, m := range []map[string]int32{resp.GetSharesOffered(), resp.GetSharesGranted()} {
			if shares, err := sharesFromWire(m); err == nil {
				for sg, n := range shares {
					if n < 0 || n > MaxShares || datastore.CheckSyncgroupID(sg) != nil {
						t.Fatalf("accepted %d shares of %q", n, sg)
					}
				}
			}
		}
		sp := signpostFromWire(resp.GetSignpost(), now)
		if len(sp.Locations) > datastore.MaxLocations || len(sp.SgIDs) > datastore.MaxSignpostSyncgroups || sp.FetchAttempts != 0 {
			t.Fatalf("signpost exceeds its bounds: %+v", sp)
		}
		for _, l := range sp.Locations {
			if l.WhenSeen.After(now) {
				t.Fatalf("location from the future: %v", l.WhenSeen)
			}
			if err := l.Peer.Validate(); err != nil {
				t.Fatalf("invalid peer ID kept: %v", err)
			}
		}
		for _, sg := range sp.SgIDs {
			if datastore.CheckSyncgroupID(sg) != nil {
				t.Fatalf("malformed syncgroup ID kept: %q", sg)
			}
		}
		var local datastore.Signpost
		local.FetchAttempts = 3
		local.Merge(sp)
		if local.FetchAttempts != 3 {
			t.Fatal("merging a peer's signpost changed FetchAttempts")
		}
	})
}
