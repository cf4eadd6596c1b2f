package datastore

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"unsafe"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives its tests (an
// appender's, say, after its Partial ended). goleveldb's mpoolDrain is exempt:
// after Close it waits up to 1 s for its pool by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"))
}

// writeInPieces writes b to p in pieces of odd sizes, as a stream delivers them.
func writeInPieces(t *testing.T, p *Partial, b []byte) {
	t.Helper()
	for len(b) > 0 {
		k := min(len(b), 77_777)
		if n, err := p.Write(b[:k]); err != nil || n != k {
			t.Fatalf("Write = %d, %v", n, err)
		}
		b = b[k:]
	}
}

// A blob of several chunks, interrupted at an offset that is no multiple of
// the direct-I/O alignment and resumed there, is written whole and in order:
// the resumed file's first chunk goes through the page cache up to the next
// aligned offset, the rest directly, the last bytes at Finalize.
func TestPartialResumedAtAnUnalignedOffset(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 5*appendChunk+3)
	ref := RefOf(data)
	cut := appendChunk + appendChunk/2 + 123

	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	writeInPieces(t, p, data[:cut])
	if p.Size() != int64(cut) {
		t.Fatalf("Size = %d, want %d", p.Size(), cut)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// Close wrote every byte taken, the ones still in the appender included.
	kept, err := os.ReadFile(s.partialPath(ref))
	if err != nil || !bytes.Equal(kept, data[:cut]) {
		t.Fatalf("partial file after Close: %d bytes (%v), want the %d written", len(kept), err, cut)
	}

	p, err = s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != int64(cut) {
		t.Fatalf("resumed at %d, want %d", p.Size(), cut)
	}
	writeInPieces(t, p, data[cut:])
	w := p.w
	if n, err := p.Finalize(); err != nil || n != int64(len(data)) {
		t.Fatalf("Finalize = %d, %v", n, err)
	}
	// The resumed file's first chunk ends at 2.5 MiB, aligned; the two
	// whole chunks after it went directly, where the file system takes
	// direct I/O; the last half MiB went at Finalize.
	if want := int64(2 * appendChunk); directIO(t) && w.directBytes != want {
		t.Errorf("%d bytes written directly on resume, want %d", w.directBytes, want)
	}
	if got := readBlob(t, s, ref); !bytes.Equal(got, data) {
		t.Fatal("the resumed blob differs from what was written")
	}
}

// directIO reports whether the test's file system takes direct I/O.
func directIO(t *testing.T) bool {
	path := filepath.Join(t.TempDir(), "probe")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f := openDirect(path)
	if f == nil {
		t.Log("no direct I/O here")
		return false
	}
	f.Close()
	return true
}

// A blob smaller than a chunk is hashed and written only when it ends.
func TestPartialSmallerThanAChunk(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 4096+7)
	ref := RefOf(data)
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	writeInPieces(t, p, data)
	if p.w.jobs != nil {
		t.Fatal("a blob smaller than a chunk started the appender's goroutines")
	}
	if _, err := p.Finalize(); err != nil {
		t.Fatal(err)
	}
	if got := readBlob(t, s, ref); !bytes.Equal(got, data) {
		t.Fatal("blob differs")
	}
}

// Bytes that do not hash to the BlobRef are caught after being written
// behind the caller, and nothing is installed.
func TestPartialMismatchCaughtAfterWritingBehind(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 3*appendChunk+11)
	ref := RefOf(data)
	data[2*appendChunk+5] ^= 1
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	writeInPieces(t, p, data)
	if _, err := p.Finalize(); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Finalize = %v, want ErrHashMismatch", err)
	}
	if _, ok, _ := s.Has(ref); ok {
		t.Fatal("a blob that failed verification is held")
	}
	if files := dirEntries(t, s.Dir()); len(files) != 0 {
		t.Fatalf("files left: %v", files)
	}
}

// A write that fails behind the caller is reported to it, by a later Write
// or by finish, and nothing after it is written.
func TestAppenderReportsAFailedWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path) // read-only: every write fails
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := newAppender(f, filepath.Join(t.TempDir(), "missing"), 0, NewHasher()) // no direct descriptor either
	var werr error
	for range 8 {
		if _, werr = a.Write(make([]byte, appendChunk)); werr != nil {
			break
		}
	}
	ferr := a.finish()
	if ferr == nil {
		t.Fatalf("finish after failed writes = nil (last Write: %v)", werr)
	}
	if werr != nil && !errors.Is(werr, ferr) && werr.Error() != ferr.Error() {
		t.Errorf("Write reported %v, finish %v: want the same first error", werr, ferr)
	}
	if fi, _ := os.Stat(path); fi.Size() != 0 {
		t.Errorf("file grew to %d bytes", fi.Size())
	}
}

// Discarding a partial mid-blob ends the appender's goroutines and leaves no file.
func TestPartialDiscardedMidBlob(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 4*appendChunk)
	ref := RefOf(data)
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	writeInPieces(t, p, data[:3*appendChunk+100])
	if err := p.Discard(); err != nil {
		t.Fatal(err)
	}
	if files := dirEntries(t, s.Dir()); len(files) != 0 {
		t.Fatalf("files left: %v", files)
	}
}

// Bytes put in AvailableBuffer's slice and passed to Write are taken where
// they are, in pieces or whole, between writes copied from elsewhere; on a
// resumed file at an unaligned offset the first slice ends at an aligned
// one, so the chunks after it still go directly. Once verified, a Partial
// lends nothing.
func TestPartialFilledInPlace(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 4*appendChunk+5000)
	ref := RefOf(data)
	cut := appendChunk/2 + 123
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	writeInPieces(t, p, data[:cut])
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if p, err = s.OpenPartial(ref); err != nil {
		t.Fatal(err)
	}
	w := p.w
	off := cut
	for step := 0; off < len(data); step++ {
		b := p.AvailableBuffer()
		room := appendChunk
		if step == 0 {
			room = appendChunk - cut%dioAlign // to the aligned end of the resumed file's first chunk
		}
		if len(b) != 0 || cap(b) != room {
			t.Fatalf("step %d at %d: AvailableBuffer has len %d, cap %d; want 0, %d", step, off, len(b), cap(b), room)
		}
		k := min(cap(b), len(data)-off)
		if step == 1 { // a piece from elsewhere, copied, then the rest in place
			if n, err := p.Write(bytes.Clone(data[off : off+777])); err != nil || n != 777 {
				t.Fatalf("Write = %d, %v", n, err)
			}
			off += 777
			rest := p.AvailableBuffer()
			if unsafe.SliceData(rest) != &b[:cap(b)][777] {
				t.Fatal("after a copied write, AvailableBuffer does not begin after its bytes")
			}
			b, k = rest, k-777
		}
		half := k / 2
		b = append(b, data[off:off+half]...)
		if n, err := p.Write(b); err != nil || n != half {
			t.Fatalf("Write in place = %d, %v", n, err)
		}
		b = p.AvailableBuffer()
		b = append(b, data[off+half:off+k]...)
		if n, err := p.Write(b); err != nil || n != k-half {
			t.Fatalf("Write in place = %d, %v", n, err)
		}
		off += k
	}
	if p.Size() != int64(len(data)) {
		t.Fatalf("Size = %d, want %d", p.Size(), len(data))
	}
	if err := p.Verify(); err != nil {
		t.Fatal(err)
	}
	if b := p.AvailableBuffer(); b != nil {
		t.Fatalf("a verified Partial lent %d bytes", cap(b))
	}
	if _, err := p.Finalize(); err != nil {
		t.Fatal(err)
	}
	// The chunks from 1.5 MiB to 3.5 MiB were whole and aligned.
	if want := int64(2 * appendChunk); directIO(t) && w.directBytes != want {
		t.Errorf("%d bytes written directly, want %d", w.directBytes, want)
	}
	if got := readBlob(t, s, ref); !bytes.Equal(got, data) {
		t.Fatal("the blob differs from what was written")
	}
}

// gatedHasher hashes into h, but its first Write waits until open is closed.
type gatedHasher struct {
	h      io.Writer
	open   chan struct{}
	writes int
}

func (g *gatedHasher) Write(b []byte) (int, error) {
	if g.writes++; g.writes == 1 {
		<-g.open
	}
	return g.h.Write(b)
}

// While the hasher is stuck on a chunk, the caller hands on chunksAhead
// chunks and is then held, not allowed to fill memory; once the hasher goes
// on, every chunk is hashed and written, in order.
func TestAppenderHoldsTheCallerChunksAhead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "f")
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h := NewHasher()
		g := &gatedHasher{h: h, open: make(chan struct{})}
		a := newAppender(f, path, 0, g)
		data := randomBytes(t, (chunksAhead+3)*appendChunk)

		var handed atomic.Int32 // chunks the caller got past
		wrote := make(chan error, 1)
		go func() {
			for off := 0; off < len(data); off += appendChunk {
				if _, err := a.Write(data[off : off+appendChunk]); err != nil {
					wrote <- err
					return
				}
				handed.Add(1)
			}
			wrote <- nil
		}()
		synctest.Wait() // every goroutine of the bubble is blocked
		if n := handed.Load(); n != chunksAhead {
			t.Errorf("with the hasher stuck, the caller handed on %d chunks; want %d", n, chunksAhead)
		}
		close(g.open)
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
		if err := a.finish(); err != nil {
			t.Fatal(err)
		}
		if got := RefFromDigest([DigestSize]byte(h.Sum(nil))); got != RefOf(data) {
			t.Errorf("hashed %v, want %v", got, RefOf(data))
		}
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
			t.Errorf("file: %d bytes, err %v; want the %d written", len(got), err, len(data))
		}
	})
}
