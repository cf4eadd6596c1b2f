package protocol

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/blobsync/blobsync/datastore"
)

func TestFetchFull(t *testing.T) {
	for _, quic := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "quic"}[quic], func(t *testing.T) {
			a := newServing(t, quic)
			data := randomBytes(t, 8<<20+123)
			ref := a.put(t, data, true)
			b := newFetching(t, a.h, quic)

			var lastDone, lastTotal int64
			n, err := b.fetch(t.Context(), a.h.ID(), ref, func(done, total int64) { lastDone, lastTotal = done, total })
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(data)) || lastDone != n || lastTotal != n {
				t.Fatalf("Fetch = %d (progress %d/%d), want %d", n, lastDone, lastTotal, len(data))
			}
			if got := b.held(t, ref); !bytes.Equal(got, data) {
				t.Fatal("fetched bytes differ")
			}
			if datastore.RefOf(b.held(t, ref)) != ref {
				t.Fatal("fetched blob does not hash to its ref")
			}
			if s := a.srv.Stats(); s.BytesSent != n || s.BlobsServed != 1 {
				t.Fatalf("server stats %+v", s)
			}
			if s := b.client.Stats(); s.BytesReceived != n || s.BlobsFetched != 1 {
				t.Fatalf("client stats %+v", s)
			}
			if b.partialSize(t, ref) != -1 {
				t.Fatal("partial file left after fetch")
			}
		})
	}
}

func TestFetchResumesFromPartial(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 4<<20)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)

	const have = 1<<20 + 7
	p, err := b.store.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data[:have])
	p.Close()

	n, err := b.fetch(t.Context(), a.h.ID(), ref, nil)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("Fetch = %d, %v", n, err)
	}
	if got := a.srv.Stats().BytesSent; got != int64(len(data)-have) {
		t.Fatalf("server sent %d bytes; a resume from %d should send %d", got, have, len(data)-have)
	}
	if !bytes.Equal(b.held(t, ref), data) {
		t.Fatal("resumed blob differs")
	}
}

func TestFetchCompletePartialOnlyVerifies(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 1<<20)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)
	p, _ := b.store.OpenPartial(ref)
	p.Write(data) // every byte arrived, but the fetch died before finalizing
	p.Close()

	if n, err := b.fetch(t.Context(), a.h.ID(), ref, nil); err != nil || n != int64(len(data)) {
		t.Fatalf("Fetch = %d, %v", n, err)
	}
	if sent := a.srv.Stats().BytesSent; sent != 0 {
		t.Fatalf("server sent %d bytes for a complete partial", sent)
	}
	if !bytes.Equal(b.held(t, ref), data) {
		t.Fatal("blob differs")
	}
}

func TestFetchPartialLongerThanBlobRestarts(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 1<<20)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)
	p, _ := b.store.OpenPartial(ref)
	p.Write(append(bytes.Clone(data), "overflow"...))
	p.Close()

	if n, err := b.fetch(t.Context(), a.h.ID(), ref, nil); err != nil || n != int64(len(data)) {
		t.Fatalf("Fetch = %d, %v", n, err)
	}
	if !bytes.Equal(b.held(t, ref), data) {
		t.Fatal("blob differs")
	}
}

func TestFetchCorruptPartialRestartsFromZeroOnce(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 2<<20)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)
	p, _ := b.store.OpenPartial(ref)
	bad := bytes.Clone(data[:1<<20])
	bad[100] ^= 1
	p.Write(bad)
	p.Close()

	n, err := b.fetch(t.Context(), a.h.ID(), ref, nil)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("Fetch = %d, %v", n, err)
	}
	if sent := a.srv.Stats().BytesSent; sent != int64(len(data)+len(data)-len(bad)) {
		t.Fatalf("server sent %d bytes, want the rest (%d) then all (%d)", sent, len(data)-len(bad), len(data))
	}
	if !bytes.Equal(b.held(t, ref), data) {
		t.Fatal("blob differs")
	}
}

func TestGetBlobOffsetAtOrPastEndIsAnError(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 1000)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)
	for _, off := range []int64{1000, 1001, 1 << 40} {
		var w bytes.Buffer
		_, written, err := b.getBlob(t.Context(), a.h.ID(), ref, off, &w)
		var oe *OffsetError
		if !errors.As(err, &oe) || oe.Size != 1000 || !errors.Is(err, ErrOffsetOutOfRange) {
			t.Fatalf("offset %d: err = %v, want OffsetError with size 1000", off, err)
		}
		if written != 0 || w.Len() != 0 {
			t.Fatalf("offset %d: %d bytes written on error", off, w.Len())
		}
	}
	if _, _, err := b.getBlob(t.Context(), a.h.ID(), ref, -1, &bytes.Buffer{}); !errors.Is(err, ErrOffsetOutOfRange) {
		t.Fatalf("negative offset: %v", err)
	}
	var w bytes.Buffer
	size, written, err := b.getBlob(t.Context(), a.h.ID(), ref, 999, &w)
	if err != nil || size != 1000 || written != 1 || w.Bytes()[0] != data[999] {
		t.Fatalf("last byte: size %d written %d err %v", size, written, err)
	}
}

func TestEmptyBlob(t *testing.T) {
	a := newServing(t, false)
	ref := a.put(t, nil, true)
	b := newFetching(t, a.h, false)
	if n, err := b.fetch(t.Context(), a.h.ID(), ref, nil); err != nil || n != 0 {
		t.Fatalf("Fetch of the empty blob = %d, %v", n, err)
	}
	if size, ok, _ := b.store.Has(ref); !ok || size != 0 {
		t.Fatal("empty blob not held")
	}
}

func TestHaveBlob(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 5000)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)
	have, err := b.client.HaveBlob(t.Context(), a.h.ID(), ref)
	if err != nil || !have.Held || have.Size != 5000 {
		t.Fatalf("HaveBlob = %+v, %v", have, err)
	}

	// An absent blob comes with the responder's signpost, validated.
	absent := datastore.RefOf([]byte("absent"))
	a.policy.signposts[absent] = datastore.Signpost{
		Locations: []datastore.Location{{Peer: b.h.ID(), WhenSeen: t0, IsServer: true}},
		SgIDs:     []string{"/blobsync/sg/photos"},
	}
	have, err = b.client.HaveBlob(t.Context(), a.h.ID(), absent)
	if err != nil || have.Held {
		t.Fatalf("HaveBlob(absent) = %+v, %v", have, err)
	}
	sp := have.Signpost
	if len(sp.Locations) != 1 || sp.Locations[0].Peer != b.h.ID() || !sp.Locations[0].IsServer ||
		!sp.Locations[0].WhenSeen.Equal(t0) || len(sp.SgIDs) != 1 || sp.FetchAttempts != 0 {
		t.Fatalf("signpost = %+v", sp)
	}
}

func TestServerCloseResetsTransfers(t *testing.T) {
	a := newServing(t, false, BufferSize(4<<10))
	ref := a.put(t, randomBytes(t, 64<<20), true)
	b := newFetching(t, a.h, false)
	started := make(chan struct{})
	var once bool
	errc := make(chan error, 1)
	go func() {
		_, err := b.fetch(t.Context(), a.h.ID(), ref, func(done, _ int64) {
			if !once {
				once = true
				close(started)
			}
		})
		errc <- err
	}()
	<-started
	a.srv.Close() // returns only when the handler has returned
	if err := <-errc; err == nil {
		t.Fatal("fetch succeeded although the server closed mid-transfer")
	}
	if n := b.partialSize(t, ref); n <= 0 || n >= 64<<20 {
		t.Fatalf("partial holds %d bytes; want what arrived before the reset", n)
	}
	// A closed server refuses new streams.
	if _, err := b.client.HaveBlob(t.Context(), a.h.ID(), ref); err == nil {
		t.Fatal("HaveBlob answered by a closed server")
	}
}

func TestFetchCancelledKeepsPartial(t *testing.T) {
	a := newServing(t, false, BufferSize(4<<10))
	data := randomBytes(t, 32<<20)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)
	ctx, cancel := context.WithCancel(t.Context())
	_, err := b.fetch(ctx, a.h.ID(), ref, func(done, _ int64) {
		if done > 1<<20 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch after cancel: %v, want context.Canceled", err)
	}
	kept := b.partialSize(t, ref)
	if kept <= 1<<20 {
		t.Fatalf("partial holds %d bytes", kept)
	}
	if _, err := b.fetch(t.Context(), a.h.ID(), ref, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.held(t, ref), data) {
		t.Fatal("blob differs after resume")
	}
	if sent := a.srv.Stats().BytesSent; sent >= int64(len(data))+kept {
		t.Fatalf("server sent %d bytes: the resume did not start at %d", sent, kept)
	}
}

func TestConfigValidate(t *testing.T) {
	for i, o := range []Option{RequestTimeout(0), StallTimeout(0, 1), StallTimeout(1, -1), BufferSize(10), BufferSize(1 << 30), MaxBlobSize(0), Logger(nil)} {
		if _, err := NewClient(nil, o); err == nil {
			t.Errorf("option %d accepted", i)
		}
	}
}

func TestUploadRateCapsTheServer(t *testing.T) {
	a := newServing(t, false, UploadRate(4<<20), BufferSize(64<<10))
	data := randomBytes(t, 2<<20)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)
	start := time.Now()
	if _, err := b.fetch(t.Context(), a.h.ID(), ref, nil); err != nil {
		t.Fatal(err)
	}
	// 2 MiB at 4 MiB/s with a 64 KiB burst cannot take less than ~0.48 s.
	if took := time.Since(start); took < 450*time.Millisecond {
		t.Fatalf("2 MiB under a 4 MiB/s cap arrived in %v", took)
	}
	if !bytes.Equal(b.held(t, ref), data) {
		t.Fatal("bytes differ")
	}
}

// failingWriter accepts limit bytes, then fails as a full disk does.
type failingWriter struct{ limit int }

var errDiskFull = errors.New("no space left on device")

func (w *failingWriter) Write(b []byte) (int, error) {
	if len(b) > w.limit {
		n := w.limit
		w.limit = 0
		return n, errDiskFull
	}
	w.limit -= len(b)
	return len(b), nil
}

// A write that fails here is this peer's failure, not the responder's: the
// error says ErrLocal (with the cause), not a protocol violation or a
// missing blob, and the peer is not blamed.
func TestGetBlobLocalWriteFailureIsLocal(t *testing.T) {
	a := newServing(t, false)
	data := randomBytes(t, 3<<20)
	ref := a.put(t, data, true)
	b := newFetching(t, a.h, false)
	_, written, err := b.getBlob(t.Context(), a.h.ID(), ref, 0, &failingWriter{limit: 1 << 20})
	if !errors.Is(err, ErrLocal) || !errors.Is(err, errDiskFull) {
		t.Fatalf("GetBlob into a failing writer: %v, want ErrLocal wrapping the write's error", err)
	}
	for _, wrong := range []error{ErrProtocol, ErrNotFound, ErrRemote, ErrTooSlow} {
		if errors.Is(err, wrong) {
			t.Fatalf("GetBlob into a failing writer: %v, which blames the peer (%v)", err, wrong)
		}
	}
	if written > 1<<20 {
		t.Fatalf("%d bytes written past the writer's failure", written)
	}
	// The responder is fine: a writer with room gets the blob.
	var buf bytes.Buffer
	if _, _, err := b.getBlob(t.Context(), a.h.ID(), ref, 0, &buf); err != nil || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("GetBlob after the failure: %v, %d bytes", err, buf.Len())
	}
}

// A fetch the responder cannot serve leaves no partial file behind.
func TestFailedFetchLeavesNoPartial(t *testing.T) {
	a := newServing(t, false)
	b := newFetching(t, a.h, false)
	ref := datastore.RefOf([]byte("held by nobody"))
	if _, err := b.fetch(t.Context(), a.h.ID(), ref, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch of a blob the peer lacks: %v, want ErrNotFound", err)
	}
	if n := b.partialSize(t, ref); n != -1 {
		t.Fatalf("a fetch that received nothing left a %d-byte partial file", n)
	}
}

// recordingWriter keeps what it is handed and the size of each write.
type recordingWriter struct {
	buf    bytes.Buffer
	writes []int
}

func (w *recordingWriter) Write(b []byte) (int, error) {
	w.writes = append(w.writes, len(b))
	return w.buf.Write(b)
}

// lendingWriter lends a buffer for its next bytes, as a Partial does, and
// counts the writes that arrive in it.
type lendingWriter struct {
	recordingWriter
	lent    []byte
	inPlace int
}

func (w *lendingWriter) AvailableBuffer() []byte {
	if w.lent == nil {
		w.lent = make([]byte, gatherSize)
	}
	return w.lent[:0]
}

func (w *lendingWriter) Write(b []byte) (int, error) {
	if len(b) > 0 && unsafe.SliceData(b) == unsafe.SliceData(w.lent) {
		w.inPlace++
	}
	return w.recordingWriter.Write(b)
}

// A large transfer is handed on a Partial's chunk at a time (the last piece
// excepted), read into the writer's own buffer where it lends one; a small
// one as it arrives, in writes no larger than the buffer.
func TestTransferIsHandedOnInChunks(t *testing.T) {
	a := newServing(t, false)
	b := newFetching(t, a.h, false)
	for _, size := range []int{3*gatherSize + 5, gatherSize, 100 << 10} {
		data := randomBytes(t, size)
		ref := a.put(t, data, true)
		var w recordingWriter
		if _, _, err := b.getBlob(t.Context(), a.h.ID(), ref, 0, &w); err != nil || !bytes.Equal(w.buf.Bytes(), data) {
			t.Fatalf("%d bytes: %v, got %d bytes", size, err, w.buf.Len())
		}
		var lw lendingWriter
		if _, _, err := b.getBlob(t.Context(), a.h.ID(), ref, 0, &lw); err != nil || !bytes.Equal(lw.buf.Bytes(), data) {
			t.Fatalf("%d bytes to a lending writer: %v, got %d bytes", size, err, lw.buf.Len())
		}
		if !slices.Equal(lw.writes, w.writes) {
			t.Fatalf("%d bytes: writes of %v to a lending writer, %v to another", size, lw.writes, w.writes)
		}
		if want := map[bool]int{true: len(lw.writes), false: 0}[size >= gatherSize]; lw.inPlace != want {
			t.Fatalf("%d bytes: %d of %d writes in the lent buffer, want %d", size, lw.inPlace, len(lw.writes), want)
		}
		for i, n := range w.writes {
			switch {
			case size >= gatherSize && i < len(w.writes)-1 && n != gatherSize:
				t.Fatalf("%d bytes: write %d of %d was %d bytes, want %d", size, i, len(w.writes), n, gatherSize)
			case size < gatherSize && n > DefaultBufferSize:
				t.Fatalf("%d bytes: a write of %d, more than the %d buffer", size, n, DefaultBufferSize)
			}
		}
		if size >= gatherSize && len(w.writes) != (size+gatherSize-1)/gatherSize {
			t.Fatalf("%d bytes in %d writes", size, len(w.writes))
		}
	}
}
