package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"google.golang.org/protobuf/proto"
)

// lyingAnswer is how the attacker, serving, answers a GetBlob for one blob.
type lyingAnswer struct {
	data  []byte
	size  uint64                  // announced
	serve func(st network.Stream) // after the header; the stream is reset after
}

// readRawRequest reads one Request frame, a byte at a time, capped.
func readRawRequest(r io.Reader) (*pb.Request, error) {
	var n uint64
	var b [1]byte
	for i := 0; ; i++ {
		if i == binary.MaxVarintLen64 {
			return nil, errors.New("frame length overflows")
		}
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, err
		}
		n |= uint64(b[0]&0x7f) << (7 * i)
		if b[0] < 0x80 {
			break
		}
	}
	if n > protocol.MaxRequestSize {
		return nil, fmt.Errorf("request of %d bytes", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	var req pb.Request
	return &req, proto.Unmarshal(buf, &req)
}

// TestAbuseLyingServer: the daemon fetches (peer get --from) from the
// attacker, which lies: wrong bytes, a short stream, extra bytes, a huge
// size, an empty blob, and a trickle of 1 byte per 100 ms. Each get fails
// naming the attacker, or (extra bytes) succeeds with verified bytes; nothing
// unverified is stored, and a short stream's bytes are kept for a resume.
func TestAbuseLyingServer(t *testing.T) {
	d, _ := startVictim(t)
	a := newAttacker(t, nil)
	attackerID := a.h.ID().String()

	lies := map[datastore.Ref]*lyingAnswer{}
	lie := func(size int, announce func(n uint64) uint64, serve func(l *lyingAnswer, st network.Stream)) datastore.Ref {
		data := make([]byte, size)
		rand.Read(data)
		l := &lyingAnswer{data: data, size: announce(uint64(size))}
		l.serve = func(st network.Stream) { serve(l, st) }
		ref := datastore.RefOf(data)
		lies[ref] = l
		return ref
	}
	same := func(n uint64) uint64 { return n }
	const shortSent = 300_000
	wrong := lie(1<<20, same, func(l *lyingAnswer, st network.Stream) {
		bad := bytes.Clone(l.data)
		bad[len(bad)/2] ^= 0x80
		st.Write(bad)
		st.CloseWrite()
	})
	short := lie(1<<20, same, func(l *lyingAnswer, st network.Stream) {
		st.Write(l.data[:shortSent])
		st.CloseWrite()
	})
	long := lie(1<<20, same, func(l *lyingAnswer, st network.Stream) {
		extra := make([]byte, 100<<10)
		rand.Read(extra)
		st.Write(joinBytes(l.data, extra))
		st.CloseWrite()
	})
	huge := lie(1<<20, func(uint64) uint64 { return 1 << 62 }, func(l *lyingAnswer, st network.Stream) {
		st.Write(l.data)
		st.CloseWrite()
	})
	empty := lie(1000, func(uint64) uint64 { return 0 }, func(l *lyingAnswer, st network.Stream) { st.CloseWrite() })
	type cut struct {
		sent int
		took time.Duration
		err  error
	}
	trickled := make(chan cut, 1)
	trickle := lie(1<<20, same, func(l *lyingAnswer, st network.Stream) {
		start := time.Now()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if _, err := st.Write(l.data[i : i+1]); err != nil {
				trickled <- cut{i, time.Since(start), err}
				return
			}
			select {
			case <-tick.C:
			case <-time.After(time.Minute):
				trickled <- cut{i, time.Since(start), errors.New("gave up")}
				return
			}
		}
	})

	a.h.SetStreamHandler(protocol.ID, func(st network.Stream) {
		defer st.Reset() // after CloseWrite and the caller's close, a no-op
		st.SetDeadline(time.Now().Add(2 * time.Minute))
		req, err := readRawRequest(st)
		if err != nil {
			return
		}
		ref, err := datastore.RefFromBytes(req.GetRef())
		l := lies[ref]
		if err != nil || l == nil {
			st.Write(rawFrame(&pb.Response{Status: pb.Status_NOT_FOUND}))
			st.CloseWrite()
			io.Copy(io.Discard, st)
			return
		}
		switch req.GetOp() {
		case pb.Op_HAVE_BLOB:
			st.Write(rawFrame(&pb.Response{Status: pb.Status_OK, Size: l.size}))
		case pb.Op_GET_BLOB:
			st.Write(rawFrame(&pb.Response{Status: pb.Status_OK, Size: l.size}))
			l.serve(st)
		case pb.Op_ACCEPTED_BLOB_OWNERSHIP:
			st.Write(rawFrame(&pb.Response{Status: pb.Status_OK, Keeping: true}))
		}
		st.CloseWrite()
		io.Copy(io.Discard, st) // until the caller closes or resets
	})

	from := a.addr(t)
	get := func(ref datastore.Ref) (result, string) {
		out := filepath.Join(t.TempDir(), "got")
		return peer(t, "get", ref.String(), "--from", from, "-o", out, "--data", d.dir), out
	}
	// The trickle takes the stall window (30 s): it runs while the others do.
	trickleOut := filepath.Join(t.TempDir(), "trickle")
	trickleGet := peerBackground(t.Context(), "get", trickle.String(), "--from", from, "-o", trickleOut, "--data", d.dir)

	failed := func(what string, r result, ref datastore.Ref, want string) {
		t.Helper()
		if r.code != 1 || !strings.Contains(r.stderr, attackerID) || !strings.Contains(r.stderr, want) {
			t.Errorf("%s: exit %d: %s; want exit 1 naming %s and %q", what, r.code, r.stderr, attackerID, want)
		}
		if heldOnDisk(t, d, ref) || held(t, d, ref.String()) {
			t.Errorf("%s: the daemon holds the blob", what)
		}
	}

	r, out := get(wrong)
	failed("wrong bytes", r, wrong, "bad data")
	if n := partialLen(t, d, wrong); n != -1 {
		t.Errorf("wrong bytes: a %d-byte partial file was kept", n)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("wrong bytes: an output file was written (%v)", err)
	}

	r, _ = get(short)
	failed("short stream", r, short, "short")
	if n := partialLen(t, d, short); n != shortSent {
		t.Errorf("short stream: the partial file holds %d bytes; want the %d received", n, shortSent)
	}

	r, out = get(long)
	if r.code == 0 {
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, lies[long].data) || !heldOnDisk(t, d, long) {
			t.Errorf("extra bytes: the get succeeded, but the copy differs or is not held (%v)", err)
		}
		t.Log("extra bytes after the blob: the get succeeded with the verified blob")
	} else {
		failed("extra bytes", r, long, "")
		t.Logf("extra bytes after the blob: the get failed: %s", strings.TrimSpace(r.stderr))
	}

	r, _ = get(huge)
	failed("a size of 2^62", r, huge, "too large")
	if n := partialLen(t, d, huge); n > 0 {
		t.Errorf("a size of 2^62: a %d-byte partial file was kept", n)
	}

	r, _ = get(empty)
	failed("an empty blob for a 1000-byte one", r, empty, "bad data")

	select {
	case c := <-trickled:
		if c.took > protocol.DefaultStallTimeout+5*time.Second {
			t.Errorf("trickle: cut off after %v (%d bytes); the stall window is %v", c.took, c.sent, protocol.DefaultStallTimeout)
		}
		t.Logf("trickle of 1 byte / 100 ms: cut off after %v and %d bytes (%v)", c.took.Round(time.Millisecond), c.sent, c.err)
	case <-time.After(protocol.DefaultStallTimeout + 20*time.Second):
		t.Fatal("trickle: never cut off")
	}
	select {
	case r := <-trickleGet:
		if r.err != nil {
			t.Fatal(r.err)
		}
		failed("trickle", r.result, trickle, "too slow")
	case <-time.After(20 * time.Second):
		t.Fatal("trickle: the get did not end after the cut-off")
	}
	checkSurvived(t, d)
}
