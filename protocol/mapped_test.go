package protocol

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

func writeTemp(t *testing.T, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestSendMappedSendsTheRange(t *testing.T) {
	data := randomBytes(t, 100_003)
	f := writeTemp(t, data)
	for _, off := range []int64{0, 1, 4095, 4096, 50_000, 100_002} {
		for _, window := range []int64{pageSize, 3 * pageSize, mapWindow} {
			for _, piece := range []int{1000, 4096, 1 << 18} {
				var out bytes.Buffer
				var counted int64
				n, err := sendMapped(&out, f, off, int64(len(data)), window, piece,
					func(k int) error {
						if k > piece {
							t.Fatalf("a write of %d bytes, pieces of %d", k, piece)
						}
						return nil
					},
					func(k int) { counted += int64(k) })
				if err != nil || n != int64(len(data))-off || counted != n {
					t.Fatalf("off %d window %d piece %d: sent %d (counted %d), %v; want %d", off, window, piece, n, counted, err, int64(len(data))-off)
				}
				if !bytes.Equal(out.Bytes(), data[off:]) {
					t.Fatalf("off %d window %d piece %d: the bytes sent differ from the file's", off, window, piece)
				}
			}
		}
	}
}

// frameWriter copies each write whole before keeping it, as yamux does.
type frameWriter struct{ b []byte }

func (w *frameWriter) Write(p []byte) (int, error) {
	frame := make([]byte, len(p))
	copy(frame, p)
	w.b = append(w.b, frame...)
	return len(p), nil
}

// A file that shrank under its mapping faults when read: that is an error
// for the transfer, not a crash of the process.
func TestSendMappedFaultIsAnError(t *testing.T) {
	if _, err := mapFile(nil, 0, 0); errors.Is(err, errMapUnsupported) {
		t.Skip("no file mapping here")
	}
	data := randomBytes(t, 5*int(pageSize))
	f := writeTemp(t, data)
	if err := os.Truncate(f.Name(), pageSize); err != nil {
		t.Fatal(err)
	}
	var out frameWriter
	n, err := sendMapped(&out, f, 0, int64(len(data)), mapWindow, int(pageSize), func(int) error { return nil }, func(int) {})
	if err == nil || !strings.Contains(err.Error(), "fault") {
		t.Fatalf("reading past the end of a truncated file: %d bytes, %v; want a fault error", n, err)
	}
	if n != pageSize || !bytes.Equal(out.b, data[:pageSize]) {
		t.Fatalf("sent %d bytes before the fault, want the %d still in the file", n, pageSize)
	}
}

func TestSendMappedStopsWhenTheRateLimitFails(t *testing.T) {
	f := writeTemp(t, randomBytes(t, 10_000))
	stop := errors.New("closing")
	calls := 0
	var out bytes.Buffer
	n, err := sendMapped(&out, f, 0, 10_000, mapWindow, 4096, func(int) error {
		if calls++; calls == 2 {
			return stop
		}
		return nil
	}, func(int) {})
	if !errors.Is(err, stop) || n != 4096 || out.Len() != 4096 {
		t.Fatalf("sent %d (%d written), %v; want 4096 and the limiter's error", n, out.Len(), err)
	}
}

// Only yamux streams, whose Write copies in the caller, are sent from a
// mapping: TCP's here, not QUIC's.
func TestMappingOnlyOnStreamsThatCopyInWrite(t *testing.T) {
	for _, quic := range []bool{false, true} {
		a, b := newHost(t, quic), newHost(t, quic)
		accepted := make(chan network.Stream, 1)
		a.SetStreamHandler("/test/map", func(s network.Stream) { accepted <- s })
		if err := b.Connect(t.Context(), peer.AddrInfo{ID: a.ID(), Addrs: a.Addrs()}); err != nil {
			t.Fatal(err)
		}
		s, err := b.NewStream(t.Context(), a.ID(), "/test/map")
		if err != nil {
			t.Fatal(err)
		}
		s.Write([]byte{1}) // the handler runs once the protocol is agreed
		st := <-accepted
		if got := copiesInWrite(st); got == quic {
			t.Errorf("quic %v: copiesInWrite = %v", quic, got)
		}
		s.Reset()
		st.Reset()
	}
}

// A blob whose file is truncated while it is served over TCP (from a
// mapping) ends the transfer with a reset, and the server goes on serving.
func TestServedFileTruncatedMidTransfer(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 8<<20)
	ref := a.put(t, data, true)
	other := randomBytes(t, 1<<20)
	otherRef := a.put(t, other, true)
	f, _, err := a.store.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	path := f.Name()
	f.Close()

	b := newFetching(t, a.h, false)
	st, err := b.h.NewStream(t.Context(), a.h.ID(), ID)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Reset()
	if err := writeMsg(st, &pb.Request{Op: pb.Op_GET_BLOB, Ref: ref.Bytes()}); err != nil {
		t.Fatal(err)
	}
	var resp pb.Response
	if err := readMsg(st, &resp, MaxResponseSize); err != nil || resp.GetStatus() != pb.Status_OK {
		t.Fatalf("GetBlob answer: %v, %v", resp.GetStatus(), err)
	}
	// The sender is held by the stream's window, far short of 8 MiB.
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(st)
	if err == nil || len(got) >= len(data) {
		t.Fatalf("read %d of %d bytes, %v; want the transfer reset", len(got), len(data), err)
	}
	if !bytes.Equal(got, data[:len(got)]) {
		t.Fatal("the bytes before the reset differ from the blob's")
	}
	_, written, err := b.getBlob(t.Context(), a.h.ID(), otherRef, 0, io.Discard)
	if err != nil || written != int64(len(other)) {
		t.Fatalf("the next GetBlob: %d bytes, %v", written, err)
	}
}
