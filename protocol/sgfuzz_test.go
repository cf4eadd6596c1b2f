package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/p2p"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"
)

// Hostile input to the syncgroup protocol: crafted requests and responses on
// raw streams, and fuzz targets of what each side decodes from the other.

func sgFrame(t testing.TB, m proto.Message) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := writeMsg(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sgRawCall sends raw bytes on a stream for syncgroup id to h and returns all
// it answers.
func sgRawCall(t *testing.T, from, to host.Host, id string, raw []byte) ([]byte, error) {
	t.Helper()
	st, err := from.NewStream(t.Context(), to.ID(), protocol.ID(id))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Write(raw); err != nil {
		return nil, err
	}
	st.CloseWrite()
	return io.ReadAll(st)
}

func sgAnswer(t *testing.T, raw []byte) *pb.SgResponse {
	t.Helper()
	var resp pb.SgResponse
	if err := readMsg(bytes.NewReader(raw), &resp, MaxSgFrameSize); err != nil {
		t.Fatalf("answer %x: %v", raw, err)
	}
	return &resp
}

// wireEntry is a valid blob entry in wire form.
func wireEntry(t testing.TB, seq uint64) *pb.SgEntry {
	return entryToWire(blobEntry(t, randPeer(t), seq))
}

// wireMember is a valid member in wire form.
func wireMember(t testing.TB) *pb.SgMember { return memberToWire(testMember(t, 0, 1)) }

func announceOf(es ...*pb.SgEntry) *pb.SgRequest {
	return &pb.SgRequest{Op: &pb.SgRequest_Announce{Announce: &pb.AnnounceRequest{Entries: es}}}
}

func joinOf(role uint32, addrs ...[]byte) *pb.SgRequest {
	return &pb.SgRequest{Op: &pb.SgRequest_Join{Join: &pb.JoinRequest{Role: role, Addrs: addrs}}}
}

func pullOf(ws ...*pb.Watermark) *pb.SgRequest {
	return &pb.SgRequest{Op: &pb.SgRequest_Pull{Pull: &pb.PullRequest{Since: ws}}}
}

// invalidRequests are well framed but must be refused whole.
func invalidRequests(t testing.TB) map[string]*pb.SgRequest {
	var tooMany []*pb.SgEntry
	for i := range MaxAnnounceEntries + 1 {
		tooMany = append(tooMany, wireEntry(t, uint64(i+1)))
	}
	var tooManyMarks []*pb.Watermark
	for range MaxPullWatermarks + 1 {
		tooManyMarks = append(tooManyMarks, &pb.Watermark{Origin: []byte(randPeer(t)), Seq: 1})
	}
	var tooManyAddrs [][]byte
	for range MaxMemberAddrs + 1 {
		tooManyAddrs = append(tooManyAddrs, ma.StringCast("/ip4/1.2.3.4/tcp/1").Bytes())
	}
	o := []byte(randPeer(t))
	mod := func(f func(e *pb.SgEntry)) *pb.SgRequest {
		e := wireEntry(t, 1)
		f(e)
		return announceOf(wireEntry(t, 1), e)
	}
	return map[string]*pb.SgRequest{
		"no operation":          {},
		"announce over the cap": announceOf(tooMany...),
		"bad ref":               mod(func(e *pb.SgEntry) { e.BlobRef = []byte("../../etc/passwd") }),
		"sha256 ref":            mod(func(e *pb.SgEntry) { e.BlobRef = append([]byte{0x01, 0x55, 0x12, 0x20}, make([]byte, 32)...) }),
		"seq 0":                 mod(func(e *pb.SgEntry) { e.Seq = 0 }),
		"both bodies":           mod(func(e *pb.SgEntry) { e.Member = wireMember(t) }),
		"neither body":          mod(func(e *pb.SgEntry) { e.BlobRef, e.BlobHolder = nil, nil }),
		"no blob holder":        mod(func(e *pb.SgEntry) { e.BlobHolder = nil }),
		"bad blob holder":       mod(func(e *pb.SgEntry) { e.BlobHolder = []byte("holder") }),
		"holder without ref":    mod(func(e *pb.SgEntry) { e.BlobRef = nil }),
		"bad origin":            mod(func(e *pb.SgEntry) { e.Origin = []byte{0x12, 0x20, 1} }),
		"member with bad role":  mod(func(e *pb.SgEntry) { e.BlobRef, e.BlobHolder, e.Member = nil, nil, wireMember(t); e.Member.Role = 3 }),
		"member with bad peer":  mod(func(e *pb.SgEntry) { e.BlobRef, e.BlobHolder, e.Member = nil, nil, wireMember(t); e.Member.Peer = nil }),
		"member with bad addr": mod(func(e *pb.SgEntry) {
			e.BlobRef, e.BlobHolder, e.Member = nil, nil, wireMember(t)
			e.Member.Addrs = [][]byte{{0xff}}
		}),
		"join with role 3":       joinOf(3),
		"join with role 256":     joinOf(256),
		"join with 17 addrs":     joinOf(0, tooManyAddrs...),
		"join with a bad addr":   joinOf(0, []byte("/ip4/1.2.3.4")),
		"duplicate watermarks":   pullOf(&pb.Watermark{Origin: o, Seq: 1}, &pb.Watermark{Origin: o, Seq: 2}),
		"watermark seq 0":        pullOf(&pb.Watermark{Origin: o}),
		"watermark without peer": pullOf(&pb.Watermark{Seq: 4}),
		"watermarks over cap":    pullOf(tooManyMarks...),
	}
}

func TestSgMalformedRequestsChangeNothing(t *testing.T) {
	p := newSgPeers(t)
	uvarint := func(n uint64) []byte { return binary.AppendUvarint(nil, n) }
	// Broken frames: the server resets the stream without answering.
	for name, raw := range map[string][]byte{
		"length above the cap": append(uvarint(MaxSgFrameSize+1), make([]byte, 1000)...),
		"length 2^63":          uvarint(1 << 63),
		"varint overflow":      bytes.Repeat([]byte{0xff}, 11),
		"truncated frame":      append(uvarint(100<<10), 1, 2, 3),
		"not protobuf":         append(uvarint(4), 0xff, 0xff, 0xff, 0xff),
		"empty stream":         nil,
	} {
		if got, err := sgRawCall(t, p.cliHost, p.srvHost, sgID, raw); err == nil && len(got) > 0 {
			t.Errorf("%s: server answered %x", name, got)
		}
	}
	for name, req := range invalidRequests(t) {
		got, err := sgRawCall(t, p.cliHost, p.srvHost, sgID, sgFrame(t, req))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if resp := sgAnswer(t, got); resp.Status != pb.Status_BAD_REQUEST || resp.Message == "" {
			t.Errorf("%s: answer %v, want BAD_REQUEST with a reason", name, resp)
		}
		if n := p.fake.count(); n != 0 {
			t.Fatalf("%s: Syncgroups called %d times", name, n)
		}
	}
	// The server still answers well-formed requests.
	if _, err := p.cli.Members(t.Context(), p.srvHost.ID(), sgID); err != nil {
		t.Fatal(err)
	}
}

func TestSgClientRefusesToSendInvalidRequests(t *testing.T) {
	p := newSgPeers(t)
	entries := []datastore.LogEntry{blobEntry(t, randPeer(t), 1), {Origin: randPeer(t)}}
	if _, err := p.cli.Announce(t.Context(), p.srvHost.ID(), sgID, entries); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("Announce of a bodiless entry: %v, want ErrBadRequest", err)
	}
	if _, err := p.cli.Join(t.Context(), p.srvHost.ID(), sgID, datastore.Role(9), nil); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("Join with role 9: %v, want ErrBadRequest", err)
	}
	if n := p.fake.count(); n != 0 {
		t.Fatalf("Syncgroups called %d times", n)
	}
}

func TestSgBusyWhenOutOfMemory(t *testing.T) {
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := p2p.New(key, p2p.ListenAddrs(ma.StringCast("/ip4/127.0.0.1/tcp/0")),
		p2p.WithProtocolLimit(sgID, p2p.ProtocolLimit{InboundStreamsPerPeer: 4, InboundStreams: 4, MemoryPerPeer: 128 << 10, Memory: 128 << 10}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	fake := &fakeGroups{}
	srv, err := NewSgServer(h, fake)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	srv.Serve(sgID)
	p := newSgPeers(t)
	introduce(p.cliHost, h)

	var big []datastore.LogEntry // ~600 KiB
	for i := range MaxAnnounceEntries {
		big = append(big, memberEntry(t, randPeer(t), uint64(i+1), testMember(t, 0, MaxMemberAddrs)))
	}
	if _, err := p.cli.Announce(t.Context(), h.ID(), sgID, big); !errors.Is(err, ErrBusy) {
		t.Fatalf("Announce beyond the memory limit: %v, want ErrBusy", err)
	}
	if n, err := p.cli.Announce(t.Context(), h.ID(), sgID, big[:10]); err != nil || n != 0 || fake.count() != 1 {
		t.Fatalf("small Announce = %d, %v after %d calls", n, err, fake.count())
	}
}

// sgFakeServer answers every stream for syncgroup id on h with raw bytes.
func sgFakeServer(h host.Host, id string, raw []byte) {
	h.SetStreamHandler(protocol.ID(id), func(st network.Stream) {
		var req pb.SgRequest
		if err := readMsg(st, &req, MaxSgFrameSize); err != nil {
			st.Reset()
			return
		}
		st.Write(raw)
		st.Close()
	})
}

func TestSgMalformedResponsesAreRejected(t *testing.T) {
	ok := func(r *pb.SgResponse) *pb.SgResponse { r.Status = pb.Status_OK; return r }
	p := newSgPeers(t)
	spec := specToWire(datastore.Spec{ID: sgID, Creator: randPeer(t)})
	bad := entryToWire(blobEntry(t, randPeer(t), 1))
	bad.Seq = 0
	var many []*pb.SgEntry
	for i := range 11 {
		many = append(many, wireEntry(t, uint64(i+1)))
	}
	member := wireMember(t)
	badRole := wireMember(t)
	badRole.Role = 7
	type call func(c *SgClient, to peer.ID) error
	join := func(c *SgClient, to peer.ID) error { _, err := c.Join(t.Context(), to, sgID, 0, nil); return err }
	members := func(c *SgClient, to peer.ID) error { _, err := c.Members(t.Context(), to, sgID); return err }
	pull := func(c *SgClient, to peer.ID) error { _, _, err := c.Pull(t.Context(), to, sgID, nil, 10); return err }
	announce := func(c *SgClient, to peer.ID) error {
		_, err := c.Announce(t.Context(), to, sgID, []datastore.LogEntry{blobEntry(t, randPeer(t), 1)})
		return err
	}
	frame := func(r *pb.SgResponse) []byte { return sgFrame(t, r) }
	for name, tc := range map[string]struct {
		raw  []byte
		call call
		want error
	}{
		"spec of another group":   {frame(ok(&pb.SgResponse{Spec: specToWire(datastore.Spec{ID: "/blobsync/sg/x", Creator: randPeer(t)})})), join, ErrProtocol},
		"malformed spec ID":       {frame(ok(&pb.SgResponse{Spec: &pb.SgSpec{Id: sgID + "/..", Creator: spec.Creator}})), join, ErrProtocol},
		"no spec":                 {frame(ok(&pb.SgResponse{})), join, ErrProtocol},
		"spec with a bad creator": {frame(ok(&pb.SgResponse{Spec: &pb.SgSpec{Id: sgID, Creator: []byte("me")}})), join, ErrProtocol},
		"spec with a bad allow":   {frame(ok(&pb.SgResponse{Spec: &pb.SgSpec{Id: sgID, Creator: spec.Creator, Allow: [][]byte{nil}}})), join, ErrProtocol},
		"member listed twice":     {frame(ok(&pb.SgResponse{Members: []*pb.SgMember{member, member}})), members, ErrProtocol},
		"member with a bad role":  {frame(ok(&pb.SgResponse{Members: []*pb.SgMember{badRole}})), members, ErrProtocol},
		"entry with seq 0":        {frame(ok(&pb.SgResponse{Entries: []*pb.SgEntry{wireEntry(t, 1), bad}})), pull, ErrProtocol},
		"more entries than asked": {frame(ok(&pb.SgResponse{Entries: many})), pull, ErrProtocol},
		"accepted more than sent": {frame(ok(&pb.SgResponse{Accepted: 2})), announce, ErrProtocol},
		"unknown status":          {frame(&pb.SgResponse{Status: 99}), members, ErrProtocol},
		"unspecified status":      {frame(&pb.SgResponse{}), members, ErrProtocol},
		"busy":                    {frame(&pb.SgResponse{Status: pb.Status_BUSY, Message: "full\x1b[2J"}), pull, ErrBusy},
		"forbidden":               {frame(&pb.SgResponse{Status: pb.Status_FORBIDDEN}), pull, ErrNotMember},
		"length above the cap":    {binary.AppendUvarint(nil, MaxSgFrameSize+1), members, ErrProtocol},
		"not protobuf":            {[]byte{3, 0xff, 0xff, 0xff}, members, ErrProtocol},
		"nothing":                 {nil, members, ErrProtocol},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHost(t, false)
			sgFakeServer(h, sgID, tc.raw)
			introduce(p.cliHost, h)
			err := tc.call(p.cli, h.ID())
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), h.ID().String()) {
				t.Fatalf("err = %v, want %v naming %s", err, tc.want, h.ID())
			}
			if strings.ContainsRune(err.Error(), 0x1b) {
				t.Fatalf("peer's control characters reached the error: %q", err)
			}
		})
	}
}

var fuzzNow = time.Unix(1_800_000_000, 0)

func seedSg(f *testing.F, msgs ...proto.Message) {
	for _, m := range msgs {
		f.Add(sgFrame(f, m))
	}
	f.Add([]byte{})
	f.Add(binary.AppendUvarint(nil, MaxSgFrameSize+1))
	f.Add(bytes.Repeat([]byte{0xff}, 11))
}

// FuzzSgRequest feeds arbitrary bytes to what an SgServer decodes from a caller.
func FuzzSgRequest(f *testing.F) {
	seedSg(f, joinOf(1, ma.StringCast("/ip4/1.2.3.4/udp/1/quic-v1").Bytes()),
		&pb.SgRequest{Op: &pb.SgRequest_Members{Members: &pb.MembersRequest{}}},
		pullOf(&pb.Watermark{Origin: []byte(randPeer(f)), Seq: 3}),
		announceOf(wireEntry(f, 1), entryToWire(memberEntry(f, randPeer(f), 2, testMember(f, 2, 2)))))
	for name, req := range invalidRequests(f) {
		if !strings.Contains(name, "cap") {
			f.Add(sgFrame(f, req))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.SgRequest
		if err := readMsg(bytes.NewReader(b), &req, MaxSgFrameSize); err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("readMsg error %v is not ErrProtocol", err)
			}
			return
		}
		c, err := requestFromWire(&req, fuzzNow)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("request error %v is not ErrBadRequest", err)
			}
			return
		}
		switch {
		case c.op < opJoin || c.op > opAnnounce:
			t.Fatalf("accepted op %d", c.op)
		case !c.role.Valid() || len(c.addrs) > MaxMemberAddrs:
			t.Fatalf("accepted role %d with %d addrs", c.role, len(c.addrs))
		case c.op == opPull && (c.limit < 1 || c.limit > MaxPullEntries):
			t.Fatalf("pull limit %d", c.limit)
		case len(c.since) > MaxPullWatermarks || len(c.entries) > MaxAnnounceEntries:
			t.Fatalf("%d watermarks, %d entries accepted", len(c.since), len(c.entries))
		}
		for o, s := range c.since {
			if o.Validate() != nil || s == 0 {
				t.Fatalf("watermark %q: %d accepted", o, s)
			}
		}
		checkEntries(t, c.entries)
		// What was accepted survives a round trip unchanged.
		again, err := entriesFromWire(entriesToWire(c.entries), fuzzNow)
		if err != nil || !entriesEqual(again, c.entries) {
			t.Fatalf("accepted entries do not round-trip: %v", err)
		}
	})
}

func checkEntries(t *testing.T, es []datastore.LogEntry) {
	for _, e := range es {
		if e.Origin.Validate() != nil || e.Seq == 0 || e.Time.After(fuzzNow) || (e.Blob == nil) == (e.Member == nil) {
			t.Fatalf("invalid entry accepted: %+v", e)
		}
		if e.Blob != nil && (!e.Blob.Ref.Defined() || e.Blob.Holder.Validate() != nil) {
			t.Fatalf("invalid blob accepted: %+v", e.Blob)
		}
		if e.Member != nil {
			checkMember(t, *e.Member)
		}
	}
}

func checkMember(t *testing.T, m datastore.Member) {
	if m.Peer.Validate() != nil || !m.Role.Valid() || len(m.Addrs) > MaxMemberAddrs || m.Since.After(fuzzNow) || slices.ContainsFunc(m.Addrs, func(a ma.Multiaddr) bool { return len(a) == 0 }) {
		t.Fatalf("invalid member accepted: %+v", m)
	}
}

// FuzzSgResponse feeds arbitrary bytes to what an SgClient decodes from a responder.
func FuzzSgResponse(f *testing.F) {
	spec := specToWire(datastore.Spec{ID: sgID, Creator: randPeer(f), ACL: datastore.ACL{Allow: []peer.ID{randPeer(f)}}, Created: fuzzNow.Add(time.Hour)})
	seedSg(f, &pb.SgResponse{Status: pb.Status_OK, Spec: spec},
		&pb.SgResponse{Status: pb.Status_OK, Members: []*pb.SgMember{wireMember(f), wireMember(f)}},
		&pb.SgResponse{Status: pb.Status_OK, Entries: []*pb.SgEntry{wireEntry(f, 1), entryToWire(memberEntry(f, randPeer(f), 2, testMember(f, 1, 3)))}, More: true},
		&pb.SgResponse{Status: pb.Status_OK, Accepted: 3},
		&pb.SgResponse{Status: pb.Status_REFUSED, Message: "no\x1b[2J\n"},
		&pb.SgResponse{Status: 42})
	const limit, sent = 10, 5
	pid := randPeer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp pb.SgResponse
		if err := readMsg(bytes.NewReader(b), &resp, MaxSgFrameSize); err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("readMsg error %v is not ErrProtocol", err)
			}
			return
		}
		if resp.GetStatus() != pb.Status_OK {
			if err := sgStatusError(pid, sgID, &resp); err == nil || strings.ContainsAny(err.Error(), "\x1b\x00\n") {
				t.Fatalf("status %v mapped to %q", resp.GetStatus(), err)
			}
		}
		if s, err := specFromWire(resp.GetSpec(), sgID, fuzzNow); err == nil {
			if s.ID != sgID || s.Creator.Validate() != nil || s.Created.After(fuzzNow) || slices.ContainsFunc(s.ACL.Allow, func(p peer.ID) bool { return p.Validate() != nil }) {
				t.Fatalf("invalid spec accepted: %+v", s)
			}
		}
		if ms, err := membersFromWire(resp.GetMembers(), fuzzNow); err == nil {
			seen := map[peer.ID]bool{}
			for _, m := range ms {
				checkMember(t, m)
				if seen[m.Peer] {
					t.Fatalf("member %s accepted twice", m.Peer)
				}
				seen[m.Peer] = true
			}
		}
		if es, _, err := pullFromWire(&resp, limit, fuzzNow); err == nil {
			if len(es) > limit {
				t.Fatalf("%d entries accepted for a limit of %d", len(es), limit)
			}
			checkEntries(t, es)
		}
		if n, err := acceptedFromWire(&resp, sent); err == nil && (n < 0 || n > sent) {
			t.Fatalf("accepted %d of %d", n, sent)
		}
	})
}
