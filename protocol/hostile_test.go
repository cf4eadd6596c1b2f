package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
)

// fakeServer answers every blob stream on h with respond, after reading the request.
func fakeServer(t *testing.T, h host.Host, respond func(st network.Stream, req *pb.Request)) {
	h.SetStreamHandler(ID, func(st network.Stream) {
		var req pb.Request
		if err := readMsg(st, &req, MaxRequestSize); err != nil {
			st.Reset()
			return
		}
		respond(st, &req)
	})
}

func TestPeerSendingWrongBytesIsNamedAndNothingKept(t *testing.T) {
	data := randomBytes(t, 2<<20)
	ref := datastore.RefOf(data)
	liar := newHost(t, false)
	fakeServer(t, liar, func(st network.Stream, req *pb.Request) {
		writeMsg(st, &pb.Response{Status: pb.Status_OK, Size: uint64(len(data))})
		bad := bytes.Clone(data[req.Offset:])
		bad[len(bad)/2] ^= 0x80
		st.Write(bad)
		st.Close()
	})
	b := newFetching(t, liar, false)
	_, err := b.fetch(t.Context(), liar.ID(), ref, nil)
	var bad *BadDataError
	if !errors.As(err, &bad) || bad.Peer != liar.ID() || bad.Ref != ref || !errors.Is(err, datastore.ErrHashMismatch) {
		t.Fatalf("Fetch from a liar: %v; want BadDataError naming %s", err, liar.ID())
	}
	if _, ok, _ := b.store.Has(ref); ok {
		t.Fatal("bad blob finalized")
	}
	if n := b.partialSize(t, ref); n != -1 {
		t.Fatalf("bad partial kept (%d bytes)", n)
	}
}

func TestShortStreamKeepsPartialForResume(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 3<<20)
	ref := a.put(t, data, true)

	const sent = 1 << 20
	flaky := newHost(t, false)
	fakeServer(t, flaky, func(st network.Stream, req *pb.Request) {
		writeMsg(st, &pb.Response{Status: pb.Status_OK, Size: uint64(len(data))})
		st.Write(data[:sent])
		st.Close() // ends early, as if the peer went away
	})
	b := newFetching(t, flaky, false)
	introduce(b.h, a.h)
	_, err := b.fetch(t.Context(), flaky.ID(), ref, nil)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("short stream: %v, want ErrProtocol", err)
	}
	if n := b.partialSize(t, ref); n != sent {
		t.Fatalf("partial holds %d bytes, want %d", n, sent)
	}
	if _, err := b.fetch(t.Context(), a.h.ID(), ref, nil); err != nil {
		t.Fatal(err)
	}
	if got := a.srv.Stats().BytesSent; got != int64(len(data)-sent) {
		t.Fatalf("good peer sent %d bytes, want %d", got, len(data)-sent)
	}
	if !bytes.Equal(b.held(t, ref), data) {
		t.Fatal("blob differs")
	}
}

func TestLyingHeaders(t *testing.T) {
	data := randomBytes(t, 1000)
	ref := datastore.RefOf(data)
	cases := map[string]struct {
		resp *pb.Response
		want error
	}{
		"size beyond max blob size": {&pb.Response{Status: pb.Status_OK, Size: 1 << 62}, ErrTooLarge},
		"unknown status":            {&pb.Response{Status: 99}, ErrProtocol},
		"unspecified status":        {&pb.Response{}, ErrProtocol},
		"busy":                      {&pb.Response{Status: pb.Status_BUSY, Message: "full\x1b[2J"}, ErrBusy},
		"internal":                  {&pb.Response{Status: pb.Status_INTERNAL}, ErrRemote},
		"bad request":               {&pb.Response{Status: pb.Status_BAD_REQUEST}, ErrBadRequest},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHost(t, false)
			fakeServer(t, h, func(st network.Stream, _ *pb.Request) { writeMsg(st, tc.resp); st.Close() })
			b := newFetching(t, h, false, MaxBlobSize(1<<30))
			_, err := b.fetch(t.Context(), h.ID(), ref, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if bytes.ContainsRune([]byte(err.Error()), 0x1b) {
				t.Fatalf("peer's control characters reached the error: %q", err)
			}
			if _, ok, _ := b.store.Has(ref); ok {
				t.Fatal("blob held after a failed fetch")
			}
		})
	}
}

func TestStalledPeerIsCutOff(t *testing.T) {
	data := randomBytes(t, 1<<20)
	ref := datastore.RefOf(data)
	release := make(chan struct{})
	defer close(release)
	staller := newHost(t, false)
	fakeServer(t, staller, func(st network.Stream, _ *pb.Request) {
		writeMsg(st, &pb.Response{Status: pb.Status_OK, Size: uint64(len(data))})
		st.Write(data[:1000])
		<-release // then nothing
		st.Reset()
	})
	b := newFetching(t, staller, false, StallTimeout(200*time.Millisecond, 1))
	_, err := b.fetch(t.Context(), staller.ID(), ref, nil)
	if !errors.Is(err, ErrTooSlow) {
		t.Fatalf("stalled peer: %v, want ErrTooSlow", err)
	}
	if n := b.partialSize(t, ref); n != 1000 {
		t.Fatalf("partial holds %d bytes, want 1000", n)
	}
}

func TestTricklingPeerIsCutOff(t *testing.T) {
	data := randomBytes(t, 1<<20)
	ref := datastore.RefOf(data)
	stop := make(chan struct{})
	defer close(stop)
	trickler := newHost(t, false)
	fakeServer(t, trickler, func(st network.Stream, _ *pb.Request) {
		writeMsg(st, &pb.Response{Status: pb.Status_OK, Size: uint64(len(data))})
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				st.Reset()
				return
			case <-tick.C:
				if _, err := st.Write(data[i : i+1]); err != nil {
					return
				}
			}
		}
	})
	// Never idle for 200ms, but ~50 bytes/s is far below 10 KB/s.
	b := newFetching(t, trickler, false, StallTimeout(200*time.Millisecond, 10_000))
	_, err := b.fetch(t.Context(), trickler.ID(), ref, nil)
	if !errors.Is(err, ErrTooSlow) {
		t.Fatalf("trickling peer: %v, want ErrTooSlow", err)
	}
}

// rawCall sends raw bytes on a blob stream to h and returns all it answers.
func rawCall(t *testing.T, from host.Host, to host.Host, raw []byte) ([]byte, error) {
	t.Helper()
	introduce(from, to)
	st, err := from.NewStream(t.Context(), to.ID(), ID)
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

func frame(t *testing.T, m *pb.Request) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := writeMsg(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUnknownAndPrivateBlobsGetTheSameAnswer(t *testing.T) {
	a := newServing(t, false)
	private := a.put(t, randomBytes(t, 4096), false)
	public := a.put(t, randomBytes(t, 4096), true)
	unknown := datastore.RefOf([]byte("never stored"))
	caller := newHost(t, false)

	for _, op := range []pb.Op{pb.Op_HAVE_BLOB, pb.Op_GET_BLOB} {
		for _, offset := range []uint64{0, 100, 1 << 20} {
			answer := func(ref datastore.Ref) []byte {
				b, err := rawCall(t, caller, a.h, frame(t, &pb.Request{Op: op, Ref: ref.Bytes(), Offset: offset}))
				if err != nil {
					t.Fatalf("%v %s: %v", op, ref, err)
				}
				return b
			}
			u, p, pub := answer(unknown), answer(private), answer(public)
			if !bytes.Equal(u, p) {
				t.Fatalf("%v offset %d: unknown answered %x, private answered %x", op, offset, u, p)
			}
			if bytes.Equal(u, pub) {
				t.Fatalf("%v offset %d: a public blob got the unknown answer", op, offset)
			}
		}
	}
	b := newFetching(t, a.h, false)
	for _, ref := range []datastore.Ref{private, unknown} {
		if _, err := b.fetch(t.Context(), a.h.ID(), ref, nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Fetch(%s) = %v, want ErrNotFound", ref, err)
		}
		if have, err := b.client.HaveBlob(t.Context(), a.h.ID(), ref); err != nil || have.Held || !have.Signpost.IsZero() {
			t.Fatalf("HaveBlob(%s) = %+v, %v", ref, have, err)
		}
	}
	// Only the public blob's bytes moved: from offsets 0 and 100 (1 MiB is past its end).
	if got := a.srv.Stats().BytesSent; got != 4096+3996 {
		t.Fatalf("server sent %d bytes, want %d", got, 4096+3996)
	}
}

func TestMalformedRequestsAreRefused(t *testing.T) {
	a := newServing(t, false)
	ref := a.put(t, randomBytes(t, 100), true)
	caller := newHost(t, false)
	uvarint := func(n uint64) []byte { return binary.AppendUvarint(nil, n) }

	// Broken frames: the server resets the stream without answering.
	for name, raw := range map[string][]byte{
		"length above the cap":   uvarint(MaxRequestSize + 1),
		"length 2^63":            uvarint(1 << 63),
		"varint overflow":        bytes.Repeat([]byte{0xff}, 11),
		"non-minimal varint":     {0x85, 0x00},
		"truncated frame":        append(uvarint(50), 1, 2, 3),
		"not protobuf":           append(uvarint(4), 0xff, 0xff, 0xff, 0xff),
		"empty stream":           nil,
		"length only, no body":   uvarint(10),
		"claims 1 GiB then dies": uvarint(1 << 30),
	} {
		got, err := rawCall(t, caller, a.h, raw)
		if err == nil && len(got) > 0 {
			t.Errorf("%s: server answered %x", name, got)
		}
	}
	// Well-framed but wrong requests get BAD_REQUEST.
	for name, req := range map[string]*pb.Request{
		"no ref":      {Op: pb.Op_GET_BLOB},
		"garbage ref": {Op: pb.Op_GET_BLOB, Ref: []byte("../../../etc/passwd")},
		"sha256 cid":  {Op: pb.Op_HAVE_BLOB, Ref: append([]byte{0x01, 0x55, 0x12, 0x20}, make([]byte, 32)...)},
		"unknown op":  {Op: 42, Ref: ref.Bytes()},
		"unspecified": {Ref: ref.Bytes()},
	} {
		got, err := rawCall(t, caller, a.h, frame(t, req))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var resp pb.Response
		if err := readMsg(bytes.NewReader(got), &resp, MaxResponseSize); err != nil || resp.Status != pb.Status_BAD_REQUEST {
			t.Errorf("%s: answer %v (%v), want BAD_REQUEST", name, &resp, err)
		}
	}
	// The server still serves well-formed requests afterwards.
	b := newFetching(t, a.h, false)
	if _, err := b.fetch(t.Context(), a.h.ID(), ref, nil); err != nil {
		t.Fatal(err)
	}
}

func TestMalformedResponsesAreRejected(t *testing.T) {
	ref := datastore.RefOf([]byte("x"))
	for name, raw := range map[string][]byte{
		"length above the cap": binary.AppendUvarint(nil, MaxResponseSize+1),
		"length 2^63":          binary.AppendUvarint(nil, 1<<63),
		"varint overflow":      bytes.Repeat([]byte{0x80}, 12),
		"not protobuf":         {3, 0xff, 0xff, 0xff},
		"nothing":              nil,
	} {
		t.Run(name, func(t *testing.T) {
			h := newHost(t, false)
			fakeServer(t, h, func(st network.Stream, _ *pb.Request) { st.Write(raw); st.Close() })
			b := newFetching(t, h, false)
			if _, err := b.client.HaveBlob(t.Context(), h.ID(), ref); !errors.Is(err, ErrProtocol) {
				t.Fatalf("HaveBlob: %v, want ErrProtocol", err)
			}
			if _, err := b.fetch(t.Context(), h.ID(), ref, nil); !errors.Is(err, ErrProtocol) {
				t.Fatalf("Fetch: %v, want ErrProtocol", err)
			}
		})
	}
}

func TestOversizedFrameAllocatesNothingLarge(t *testing.T) {
	claim := binary.AppendUvarint(nil, 512<<20) // 512 MiB, far above the cap
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 100 {
		var resp pb.Response
		if err := readMsg(bytes.NewReader(claim), &resp, MaxResponseSize); !errors.Is(err, ErrProtocol) {
			t.Fatalf("readMsg: %v, want ErrProtocol", err)
		}
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Fatalf("100 oversized frames allocated %d bytes", grew)
	}
}
