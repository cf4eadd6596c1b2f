package integration

// The abuse suite (issue #8, hostile peers): an in-test libp2p host, the
// attacker, speaks raw bytes to a real peer daemon (and serves it lies), and
// the daemon must answer precisely, refuse what it should, keep its limits and
// its store intact, and go on serving well-behaved peers.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/ipfs/go-cid"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	mh "github.com/multiformats/go-multihash"
	"google.golang.org/protobuf/proto"
)

// lenPrefix is a frame length: n as a uvarint.
func lenPrefix(n uint64) []byte { return binary.AppendUvarint(nil, n) }

// joinBytes concatenates parts.
func joinBytes(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// wellBehavedGet has good fetch ref from d with peer get --from and checks the bytes.
func wellBehavedGet(t *testing.T, good, d *daemon, ref datastore.Ref, want []byte) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "got")
	ok(t, "get", ref.String(), "--from", d.addr(t, "tcp"), "-o", out, "--data", good.dir)
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the well-behaved peer's copy of %s differs (%d bytes, %v)", ref, len(got), err)
	}
}

// TestAbuseMalformedFramesAreRefused: broken frames on the blob protocol and
// on a syncgroup's protocol are reset without a byte of answer; a request
// that never completes is cut off at the request timeout; afterwards a
// well-behaved peer still fetches a public blob.
func TestAbuseMalformedFramesAreRefused(t *testing.T) {
	d, _ := startVictim(t)
	good := startDaemon(t, tcpListen)
	ref, data := putBlob(t, d, 256<<10, "--public")
	const sgID = "/blobsync/sg/abuse-frames"
	ok(t, "sg", "create", sgID, "--open", "--data", d.dir)
	a := newAttacker(t, d)

	// A frame that never completes, on a stream left open: the daemon must
	// not wait for it beyond its request timeout.
	type timed struct {
		r    rawReply
		took time.Duration
	}
	slow := make(chan timed, 1)
	go func() {
		start := time.Now()
		r := a.send(t.Context(), protocol.ID, joinBytes(lenPrefix(50), []byte{1, 2, 3}), false, 3*protocol.DefaultRequestTimeout)
		slow <- timed{r, time.Since(start)}
	}()

	blob := []struct {
		name string
		raw  []byte
	}{
		{"length one above the cap", lenPrefix(protocol.MaxRequestSize + 1)},
		{"length above the cap, with the body", joinBytes(lenPrefix(protocol.MaxRequestSize+1), make([]byte, protocol.MaxRequestSize+1))},
		{"length 2^63", lenPrefix(1 << 63)},
		{"length 2^64-1", lenPrefix(math.MaxUint64)},
		{"11 bytes of 0xff", bytes.Repeat([]byte{0xff}, 11)},
		{"10-byte varint overflowing 64 bits", append(bytes.Repeat([]byte{0xff}, 9), 0x02)},
		{"non-minimal varint 0x80 0x00", []byte{0x80, 0x00}},
		{"non-minimal varint 0x85 0x00 and a body", joinBytes([]byte{0x85, 0x00}, rawBody(&pb.Request{Op: pb.Op_HAVE_BLOB, Ref: ref.Bytes()})[:5])},
		{"truncated frame", joinBytes(lenPrefix(50), []byte{1, 2, 3})},
		{"length only", lenPrefix(10)},
		{"claims 1 GiB, sends 64 KiB", joinBytes(lenPrefix(1<<30), make([]byte, 64<<10))},
		{"not protobuf", joinBytes(lenPrefix(4), []byte{0xff, 0xff, 0xff, 0xff})},
		{"invalid wire type", joinBytes(lenPrefix(2), []byte{0x0f, 0x00})},
		{"truncated field", joinBytes(lenPrefix(3), []byte{0x12, 0x40, 0x01})},
		{"valid request cut short", func() []byte { f := rawFrame(&pb.Request{Op: pb.Op_HAVE_BLOB, Ref: ref.Bytes()}); return f[:len(f)-1] }()},
	}
	for _, c := range blob {
		if r := a.call(t, protocol.ID, c.raw); len(r.data) != 0 || !r.reset() {
			t.Errorf("blob protocol, %s: %v; want a reset and no answer", c.name, r)
		}
	}
	sg := []struct {
		name string
		raw  []byte
	}{
		{"length one above the cap", lenPrefix(protocol.MaxSgFrameSize + 1)},
		{"length 2^63", lenPrefix(1 << 63)},
		{"11 bytes of 0xff", bytes.Repeat([]byte{0xff}, 11)},
		{"non-minimal varint 0x80 0x00", []byte{0x80, 0x00}},
		{"truncated frame", joinBytes(lenPrefix(50), []byte{1, 2, 3})},
		{"claims the 2 MiB cap, sends 1 KiB", joinBytes(lenPrefix(protocol.MaxSgFrameSize), make([]byte, 1<<10))},
		{"not protobuf", joinBytes(lenPrefix(4), []byte{0xff, 0xff, 0xff, 0xff})},
	}
	for _, c := range sg {
		if r := a.call(t, libp2pproto.ID(sgID), c.raw); len(r.data) != 0 || !r.reset() {
			t.Errorf("syncgroup protocol, %s: %v; want a reset and no answer", c.name, r)
		}
	}

	select {
	case s := <-slow:
		if len(s.r.data) != 0 || !s.r.reset() {
			t.Errorf("incomplete frame on an open stream: %v; want a reset and no answer", s.r)
		}
		if s.took > protocol.DefaultRequestTimeout+3*time.Second {
			t.Errorf("incomplete frame held the stream for %v; the request timeout is %v", s.took, protocol.DefaultRequestTimeout)
		}
		t.Logf("an incomplete frame on an open stream was reset after %v", s.took.Round(time.Millisecond))
	case <-time.After(3 * protocol.DefaultRequestTimeout):
		t.Fatal("an incomplete frame on an open stream was never cut off")
	}

	wellBehavedGet(t, good, d, ref, data)
	checkSurvived(t, d)
}

// rawBody is m's encoding without the length.
func rawBody(m proto.Message) []byte {
	body, _, _ := splitRawFrame(rawFrame(m))
	return body
}

// malformedRefs are binary BlobRefs the daemon must refuse as malformed.
func malformedRefs(t *testing.T) map[string][]byte {
	t.Helper()
	digest := make([]byte, 32)
	rand.Read(digest)
	blake3, err := mh.Encode(digest, mh.BLAKE3)
	if err != nil {
		t.Fatal(err)
	}
	short, _ := mh.Encode(digest[:16], mh.BLAKE3)
	identity, _ := mh.Encode([]byte("../../etc/passwd"), mh.IDENTITY)
	sha, err := mh.Sum([]byte("x"), mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	good := datastore.RefOf([]byte("x"))
	return map[string][]byte{
		"wrong codec (dag-pb)":           cid.NewCidV1(cid.DagProtobuf, blake3).Bytes(),
		"wrong codec (dag-cbor)":         cid.NewCidV1(cid.DagCBOR, blake3).Bytes(),
		"sha256 multihash":               cid.NewCidV1(cid.Raw, sha).Bytes(),
		"CIDv0":                          []byte(sha),
		"16-byte blake3 digest":          cid.NewCidV1(cid.Raw, short).Bytes(),
		"identity hash of a path":        cid.NewCidV1(cid.Raw, identity).Bytes(),
		"../../etc/passwd":               []byte("../../etc/passwd"),
		"string form plus a path":        []byte(good.String() + "/../../etc/passwd"),
		"string form, not binary":        []byte(good.String()),
		"binary ref with trailing bytes": append(good.Bytes(), "/../x"...),
		"NUL bytes":                      make([]byte, 38),
		"4000 bytes":                     bytes.Repeat([]byte{'A'}, 4000),
		"empty":                          nil,
	}
}

// TestAbuseMalformedRefsAreBadRequests: every malformed BlobRef, in every
// op, gets BAD_REQUEST and nothing else, without local details, and the
// daemon creates no file for it, in or beside its data directory.
func TestAbuseMalformedRefsAreBadRequests(t *testing.T) {
	d, _ := startVictim(t)
	const sgID = "/blobsync/sg/abuse-refs"
	ok(t, "sg", "create", sgID, "--open", "--data", d.dir)
	putBlob(t, d, 1000, "--public", "--sg", sgID)
	a := newAttacker(t, d)
	outside := filepath.Join(filepath.Dir(d.dir), "etc")
	_, errOutside := os.Stat(outside)
	before := dataDirListing(t, d.dir)

	for name, ref := range malformedRefs(t) {
		for _, req := range []*pb.Request{
			{Op: pb.Op_HAVE_BLOB, Ref: ref},
			{Op: pb.Op_GET_BLOB, Ref: ref},
			{Op: pb.Op_GET_BLOB, Ref: ref, Offset: 1 << 40, Distance: map[string]uint32{sgID: 0}},
			{Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, Ref: ref, SharesTaken: map[string]int32{sgID: 2}},
		} {
			what := fmt.Sprintf("%v with %s", req.Op, name)
			resp := oneResponse(t, what, a.call(t, protocol.ID, rawFrame(req)))
			if resp.Status != pb.Status_BAD_REQUEST || resp.Size != 0 || resp.Signpost != nil || resp.SharesOffered != nil || resp.SharesGranted != nil || resp.Keeping {
				t.Errorf("%s: answered %v; want BAD_REQUEST alone", what, resp)
			}
			if strings.Contains(resp.Message, d.dir) || strings.Contains(resp.Message, string(filepath.Separator)+"blobs") {
				t.Errorf("%s: the answer shows local paths: %q", what, resp.Message)
			}
		}
	}

	if diff := diffDataDir(before, dataDirListing(t, d.dir)); diff != "" {
		t.Errorf("malformed refs changed the data directory:\n%s", diff)
	}
	if _, err := os.Stat(outside); !errors.Is(err, os.ErrNotExist) || !errors.Is(errOutside, os.ErrNotExist) {
		t.Errorf("%s exists beside the data directory (before: %v, after: %v)", outside, errOutside, err)
	}
	checkSurvived(t, d)
}

// TestAbuseOffsetsPastTheEnd: GetBlob at and past the end of a public blob
// answers OFFSET_OUT_OF_RANGE with the size and never data; a private blob
// answers, byte for byte, like an unknown one, whatever the op and offset.
func TestAbuseOffsetsPastTheEnd(t *testing.T) {
	d, maddr := startVictim(t)
	pub, data := putBlob(t, d, 100_000, "--public")
	priv, _ := putBlob(t, d, 100_000)
	unknown := unheldRef()
	a := newAttacker(t, d)
	sent := metricOf(t, maddr, "blobsync_bytes_sent_total")
	size := uint64(len(data))

	for _, off := range []uint64{size, size + 1, 1 << 32, 1 << 63, math.MaxUint64} {
		what := fmt.Sprintf("GetBlob at offset %d of %d", off, size)
		resp := oneResponse(t, what, a.call(t, protocol.ID, rawFrame(&pb.Request{Op: pb.Op_GET_BLOB, Ref: pub.Bytes(), Offset: off})))
		if resp.Status != pb.Status_OFFSET_OUT_OF_RANGE || resp.Size != size || resp.SharesOffered != nil || resp.Signpost != nil {
			t.Errorf("%s: answered %v; want OFFSET_OUT_OF_RANGE with size %d", what, resp, size)
		}
	}
	// The edge is exact: the last byte is served.
	resp, rest := responseHeader(t, "GetBlob of the last byte", a.call(t, protocol.ID, rawFrame(&pb.Request{Op: pb.Op_GET_BLOB, Ref: pub.Bytes(), Offset: size - 1})))
	if resp.Status != pb.Status_OK || resp.Size != size || !bytes.Equal(rest, data[size-1:]) {
		t.Errorf("GetBlob of the last byte: %v then %x; want OK, size %d, then %x", resp, rest, size, data[size-1:])
	}

	for _, req := range []*pb.Request{
		{Op: pb.Op_HAVE_BLOB},
		{Op: pb.Op_GET_BLOB},
		{Op: pb.Op_GET_BLOB, Offset: 1},
		{Op: pb.Op_GET_BLOB, Offset: size},
		{Op: pb.Op_GET_BLOB, Offset: 1 << 63},
		{Op: pb.Op_ACCEPTED_BLOB_OWNERSHIP, SharesTaken: map[string]int32{"/blobsync/sg/x": 1}},
	} {
		what := fmt.Sprintf("%v at offset %d", req.Op, req.Offset)
		req.Ref = unknown.Bytes()
		ru := a.call(t, protocol.ID, rawFrame(req))
		req.Ref = priv.Bytes()
		rp := a.call(t, protocol.ID, rawFrame(req))
		if r := oneResponse(t, what+", unknown blob", ru); r.Status != pb.Status_NOT_FOUND {
			t.Errorf("%s of an unknown blob: %v; want NOT_FOUND", what, r)
		}
		if ru.err != nil || rp.err != nil || !bytes.Equal(ru.data, rp.data) {
			t.Errorf("%s: a private blob answered %v, an unknown one %v", what, rp, ru)
		}
	}
	if got := metricOf(t, maddr, "blobsync_bytes_sent_total") - sent; got != 1 {
		t.Errorf("the daemon sent %v blob bytes; want 1 (the last byte)", got)
	}
	checkSurvived(t, d)
}
