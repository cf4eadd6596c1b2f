package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"
)

// TestAbuseNonMemberGetsTheUnknownAnswer: a peer in no syncgroup asking for a
// group blob gets, in every op, exactly the answer for a random unknown ref,
// and no byte of it is sent.
func TestAbuseNonMemberGetsTheUnknownAnswer(t *testing.T) {
	d, maddr := startVictim(t)
	const sgID = "/blobsync/sg/abuse-group"
	ok(t, "sg", "create", sgID, "--open", "--data", d.dir)
	ref, data := putBlob(t, d, 200_000, "--sg", sgID)
	a := newAttacker(t, d)
	sent := metricOf(t, maddr, "blobsync_bytes_sent_total")
	size := uint64(len(data))

	for _, req := range []*pb.Request{
		{Op: pb.Op_HAVE_BLOB},
		{Op: pb.Op_GET_BLOB},
		{Op: pb.Op_GET_BLOB, Distance: map[string]uint32{sgID: 0}},
		{Op: pb.Op_GET_BLOB, Offset: 1000},
		{Op: pb.Op_GET_BLOB, Offset: size},
		{Op: pb.Op_GET_BLOB, Offset: 1 << 63},
		{Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, SharesTaken: map[string]int32{sgID: 2}},
	} {
		what := fmt.Sprintf("%v at offset %d", req.Op, req.Offset)
		req.Ref = ref.Bytes()
		rg := a.call(t, protocol.ID, rawFrame(req))
		req.Ref = unheldRef().Bytes()
		ru := a.call(t, protocol.ID, rawFrame(req))
		if r := oneResponse(t, what+", unknown blob", ru); r.Status != pb.Status_NOT_FOUND || r.Signpost != nil {
			t.Errorf("%s of an unknown blob: %v; want NOT_FOUND alone", what, r)
		}
		if rg.err != nil || !bytes.Equal(rg.data, ru.data) {
			t.Errorf("%s: the group blob answered %v, an unknown one %v", what, rg, ru)
		}
	}
	if got := metricOf(t, maddr, "blobsync_bytes_sent_total"); got != sent {
		t.Errorf("the daemon sent %v blob bytes to a non-member", got-sent)
	}
	if sh := ls(t, d)[ref.String()].Shares[sgID]; sh != 2 {
		t.Errorf("the device holds %d shares after a non-member's acknowledgement; want 2", sh)
	}
	checkSurvived(t, d)
}

// sgOutcome describes what a syncgroup stream got, with the syncgroup ID
// replaced, so that two syncgroups' outcomes compare.
func sgOutcome(r rawReply, id string) string {
	norm := func(s string) string { return strings.ReplaceAll(s, id, "<SG>") }
	if r.openErr != nil {
		return "not negotiated: " + norm(r.openErr.Error())
	}
	body, rest, err := splitRawFrame(r.data)
	if err != nil {
		return fmt.Sprintf("no frame (%v), stream ended with %v", err, r.err)
	}
	var resp pb.SgResponse
	if err := proto.Unmarshal(body, &resp); err != nil {
		return fmt.Sprintf("not an SgResponse (%v)", err)
	}
	resp.Message = norm(resp.Message)
	return fmt.Sprintf("answered {%v}, %d bytes more, stream ended with %v", &resp, len(rest), r.err)
}

// TestAbuseSyncgroupOfNonMemberLooksUnknown: Members, Pull and Announce from
// a peer that is not a member of a syncgroup the daemon is in are answered
// exactly like the same requests for a syncgroup the daemon is not in:
// strangers cannot learn which syncgroups a peer belongs to (DESIGN §6,
// syncgroup.Manager.memberGroup).
func TestAbuseSyncgroupOfNonMemberLooksUnknown(t *testing.T) {
	d, _ := startVictim(t)
	const real, madeUp = "/blobsync/sg/abuse-real", "/blobsync/sg/abuse-fake" // same length
	ok(t, "sg", "create", real, "--open", "--data", d.dir)
	putBlob(t, d, 1000, "--sg", real)
	a := newAttacker(t, d)
	membersBefore := membersOf(t, d, real)

	self := []byte(a.h.ID())
	for _, c := range []struct {
		name string
		req  *pb.SgRequest
	}{
		{"members", &pb.SgRequest{Op: &pb.SgRequest_Members{Members: &pb.MembersRequest{}}}},
		{"pull", &pb.SgRequest{Op: &pb.SgRequest_Pull{Pull: &pb.PullRequest{}}}},
		{"pull since", &pb.SgRequest{Op: &pb.SgRequest_Pull{Pull: &pb.PullRequest{Since: []*pb.Watermark{{Origin: []byte(daemonPeerID(t, d)), Seq: 1}}, Limit: 10}}}},
		{"announce", &pb.SgRequest{Op: &pb.SgRequest_Announce{Announce: &pb.AnnounceRequest{Entries: []*pb.SgEntry{{
			Origin: self, Seq: 1, TimeUnixNano: time.Now().UnixNano(), BlobRef: unheldRef().Bytes(), BlobHolder: self,
		}}}}}},
	} {
		rr := a.send(t.Context(), libp2pproto.ID(real), rawFrame(c.req), true, 10*time.Second)
		rf := a.send(t.Context(), libp2pproto.ID(madeUp), rawFrame(c.req), true, 10*time.Second)
		if or, of := sgOutcome(rr, real), sgOutcome(rf, madeUp); or != of {
			t.Errorf("%s from a non-member tells a syncgroup the daemon is in from one it is not in:\n  its syncgroup: %s\n  made-up one:   %s", c.name, or, of)
		}
	}
	if after := membersOf(t, d, real); len(after) != len(membersBefore) {
		t.Errorf("a non-member's traffic changed the members: %v -> %v", membersBefore, after)
	}
	checkSurvived(t, d)
}

// holders is the number of peers that acknowledged holding ref, per peer ls --json.
func holders(t *testing.T, d *daemon, ref datastore.Ref) int {
	t.Helper()
	var entries []struct {
		Ref     string
		Holders int
	}
	if err := json.Unmarshal([]byte(ok(t, "ls", "--json", "--data", d.dir)), &entries); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Ref == ref.String() {
			return e.Holders
		}
	}
	t.Fatalf("peer ls does not list %s", ref)
	return 0
}

// daemonPeerID is d's peer ID, decoded.
func daemonPeerID(t *testing.T, d *daemon) libp2ppeer.ID {
	t.Helper()
	id, err := libp2ppeer.Decode(d.id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestAbuseOddMessages: a Response sent as a request, extra bytes after a
// request, a second request on a stream, acknowledgements of transfers that
// never happened, and a Join the ACL does not admit.
func TestAbuseOddMessages(t *testing.T) {
	d, maddr := startVictim(t)
	const open, allow = "/blobsync/sg/abuse-open", "/blobsync/sg/abuse-allow"
	ok(t, "sg", "create", open, "--open", "--data", d.dir)
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	someoneElse, _ := libp2ppeer.IDFromPrivateKey(key)
	ok(t, "sg", "create", allow, "--allow", someoneElse.String(), "--data", d.dir)
	pub, data := putBlob(t, d, 100_000, "--public", "--sg", open)
	grp, _ := putBlob(t, d, 100_000, "--sg", open)
	size := uint64(len(data))
	a := newAttacker(t, d)
	haveReq := &pb.Request{Op: pb.Op_HAVE_BLOB, Ref: pub.Bytes()}
	clean := a.call(t, protocol.ID, rawFrame(haveReq))
	if r := oneResponse(t, "HaveBlob of a public blob", clean); r.Status != pb.Status_OK || r.Size != size {
		t.Fatalf("HaveBlob of a public blob: %v", r)
	}
	sent := metricOf(t, maddr, "blobsync_bytes_sent_total")

	t.Run("responses as requests", func(t *testing.T) {
		for _, m := range []proto.Message{
			&pb.Response{Status: pb.Status_OK, Size: size},
			&pb.Response{Status: pb.Status_NOT_FOUND, Signpost: &pb.Signpost{SgIds: []string{open}, Locations: []*pb.Location{{Peer: []byte(a.h.ID()), IsServer: true}}}},
			&pb.Response{Status: pb.Status_OFFSET_OUT_OF_RANGE, Size: size},
			&pb.Response{Status: pb.Status_OK, SharesOffered: map[string]int32{open: 2}, Keeping: true},
			&pb.SgResponse{Status: pb.Status_OK, Members: []*pb.SgMember{{Peer: []byte(a.h.ID()), Role: 1}}},
		} {
			what := fmt.Sprintf("%T {%v} as a request", m, m)
			r := a.call(t, protocol.ID, rawFrame(m))
			// As a Request, these bytes have no ref (a Response's field 2 is a
			// varint), so they are malformed, or do not even parse.
			if proto.Unmarshal(rawBody(m), &pb.Request{}) != nil {
				if len(r.data) != 0 || !r.reset() {
					t.Errorf("%s (not a Request at all): %v; want a reset and no answer", what, r)
				}
				continue
			}
			if resp := oneResponse(t, what, r); resp.Status != pb.Status_BAD_REQUEST {
				t.Errorf("%s: answered %v; want BAD_REQUEST", what, resp)
			}
		}
	})

	t.Run("extra bytes after a request", func(t *testing.T) {
		junk := make([]byte, 512)
		rand.Read(junk)
		if r := a.call(t, protocol.ID, joinBytes(rawFrame(haveReq), junk)); r.err != nil || !bytes.Equal(r.data, clean.data) {
			t.Errorf("HaveBlob then junk: %v; want exactly the plain answer %x", r, clean.data)
		}
		// After GetBlob's bytes only the blob's acknowledgement may follow.
		r := a.call(t, protocol.ID, joinBytes(rawFrame(&pb.Request{Op: pb.Op_GET_BLOB, Ref: pub.Bytes(), Offset: size - 10}), junk))
		refusedAfterBlob(t, "GetBlob of the last 10 bytes then junk", r, size, data[size-10:])
	})

	t.Run("second request on a stream", func(t *testing.T) {
		r := a.call(t, protocol.ID, rawFrames(haveReq, &pb.Request{Op: pb.Op_GET_BLOB, Ref: pub.Bytes()}))
		if r.err != nil || !bytes.Equal(r.data, clean.data) {
			t.Errorf("HaveBlob then GetBlob on one stream: %v; want the HaveBlob answer alone, %x", r, clean.data)
		}
		r = a.call(t, protocol.ID, rawFrames(&pb.Request{Op: pb.Op_GET_BLOB, Ref: pub.Bytes(), Offset: size - 1}, &pb.Request{Op: pb.Op_GET_BLOB, Ref: pub.Bytes()}))
		refusedAfterBlob(t, "two GetBlobs on one stream", r, size, data[size-1:])
		if got := metricOf(t, maddr, "blobsync_bytes_sent_total") - sent; got != 11 {
			t.Errorf("the daemon sent %v blob bytes; want 11 (10 + 1, no second transfer)", got)
		}
	})

	t.Run("acknowledgements of transfers that never happened", func(t *testing.T) {
		// A public blob of the group that the attacker never fetched any of
		// (the blob above was partly fetched by the subtests before).
		unfetched, unfetchedData := putBlob(t, d, 50_000, "--public", "--sg", open)
		ack := func(ref datastore.Ref) rawReply {
			return a.call(t, protocol.ID, rawFrame(&pb.Request{Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: ref.Bytes(), SharesTaken: map[string]int32{open: 2}}))
		}
		if r := oneResponse(t, "acknowledging a public blob never fetched", ack(unfetched)); r.Status != pb.Status_BAD_REQUEST || r.SharesGranted != nil || r.Keeping {
			t.Errorf("acknowledging a public blob never fetched: %v; want BAD_REQUEST", r)
		}
		rg, ru := ack(grp), ack(unheldRef())
		if rg.err != nil || !bytes.Equal(rg.data, ru.data) {
			t.Errorf("acknowledging a group blob: %v; an unknown one: %v; want the same", rg, ru)
		}
		shares := func() (int32, int32) {
			own := ls(t, d)
			return own[unfetched.String()].Shares[open], own[grp.String()].Shares[open]
		}
		if p, g := shares(); p != 2 || g != 2 {
			t.Errorf("after the acknowledgements the device holds %d and %d shares; want 2 and 2", p, g)
		}
		// Fetching the public blob for real offers a non-member no share, and
		// its acknowledgement grants nothing, however often it is repeated.
		r := a.call(t, protocol.ID, rawFrame(&pb.Request{Op: pb.Op_GET_BLOB, Ref: unfetched.Bytes(), Distance: map[string]uint32{open: 0}}))
		resp, rest := responseHeader(t, "GetBlob of the public blob", r)
		if resp.Status != pb.Status_OK || len(resp.SharesOffered) != 0 || !bytes.Equal(rest, unfetchedData) {
			t.Fatalf("GetBlob of the public blob: %v then %d bytes", resp, len(rest))
		}
		if r := oneResponse(t, "acknowledging a real fetch", ack(unfetched)); r.Status != pb.Status_OK || len(r.SharesGranted) != 0 {
			t.Errorf("acknowledging a real fetch: %v; want OK granting nothing", r)
		}
		if r := oneResponse(t, "acknowledging it again", ack(unfetched)); r.Status != pb.Status_OK || len(r.SharesGranted) != 0 {
			t.Errorf("acknowledging a fetch twice: %v; want the same answer, granting nothing", r)
		}
		if p, g := shares(); p != 2 || g != 2 {
			t.Errorf("after a non-member's fetch and acknowledgement the device holds %d and %d shares; want 2 and 2", p, g)
		}
		t.Logf("holders of the public blob after a non-member's fetch and acknowledgement: %d", holders(t, d, unfetched))
	})

	t.Run("join refused by the allowlist", func(t *testing.T) {
		before := membersOf(t, d, allow)
		join := &pb.SgRequest{Op: &pb.SgRequest_Join{Join: &pb.JoinRequest{Role: 1, Addrs: [][]byte{a.h.Addrs()[0].Bytes()}}}}
		r := a.call(t, libp2pproto.ID(allow), rawFrame(join))
		body, rest, err := splitRawFrame(r.data)
		var resp pb.SgResponse
		if err != nil || r.err != nil || len(rest) != 0 || proto.Unmarshal(body, &resp) != nil || resp.Status != pb.Status_REFUSED || resp.Spec != nil {
			t.Errorf("join of an allowlist group by a stranger: %v (%v); want REFUSED alone", r, &resp)
		}
		if after := membersOf(t, d, allow); len(after) != len(before) || after[a.h.ID().String()] != "" {
			t.Errorf("a refused join changed the members: %v -> %v", before, after)
		}
		r = a.call(t, libp2pproto.ID(allow), rawFrame(&pb.SgRequest{Op: &pb.SgRequest_Members{Members: &pb.MembersRequest{}}}))
		if body, _, err := splitRawFrame(r.data); err != nil || proto.Unmarshal(body, &resp) != nil || resp.Status != pb.Status_NOT_FOUND || resp.Members != nil {
			t.Errorf("members of the group after a refused join: %v (%v); want NOT_FOUND", r, &resp)
		}
	})
	checkSurvived(t, d)
}

// refusedAfterBlob checks the answer to a GetBlob followed on its stream by
// something other than the blob's acknowledgement: an OK header for a blob of
// size, exactly the bytes asked for, then a reset or one BAD_REQUEST, and
// nothing more.
func refusedAfterBlob(t *testing.T, what string, r rawReply, size uint64, want []byte) {
	t.Helper()
	if r.openErr != nil {
		t.Fatalf("%s: %v", what, r)
	}
	body, rest, err := splitRawFrame(r.data)
	var resp pb.Response
	if err != nil || proto.Unmarshal(body, &resp) != nil || resp.Status != pb.Status_OK || resp.Size != size || !bytes.HasPrefix(rest, want) {
		t.Fatalf("%s: %v; want OK, size %d, then the %d bytes asked for", what, r, size, len(want))
	}
	tail := rest[len(want):]
	if len(tail) == 0 {
		if !r.reset() {
			t.Errorf("%s: after the bytes a clean close; want a reset or BAD_REQUEST", what)
		}
		return
	}
	body, more, err := splitRawFrame(tail)
	var refused pb.Response
	if err != nil || proto.Unmarshal(body, &refused) != nil || refused.Status != pb.Status_BAD_REQUEST || len(more) != 0 {
		t.Errorf("%s: after the bytes %x; want BAD_REQUEST alone", what, tail)
	}
}
