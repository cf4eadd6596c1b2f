package datastore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func openStore(t *testing.T) *BlobStore {
	t.Helper()
	s, err := OpenBlobStore(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readBlob(t *testing.T, s *BlobStore, ref Ref) []byte {
	t.Helper()
	f, _, err := s.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dirEntries lists every file under dir, relative to it.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPutOpenListDelete(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 3<<20+17)
	ref, n, err := s.Put(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if ref != RefOf(data) || n != int64(len(data)) {
		t.Fatalf("Put = %s, %d; want %s, %d", ref, n, RefOf(data), len(data))
	}
	if got := readBlob(t, s, ref); !bytes.Equal(got, data) {
		t.Fatal("stored bytes differ")
	}
	if size, ok, err := s.Has(ref); err != nil || !ok || size != n {
		t.Fatalf("Has = %d, %v, %v", size, ok, err)
	}
	name := ref.String()
	want := filepath.Join(name[len(name)-3:len(name)-1], name)
	if files := dirEntries(t, s.Dir()); len(files) != 1 || files[0] != want {
		t.Fatalf("files = %v, want [%s]", files, want)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0] != (BlobInfo{ref, n}) {
		t.Fatalf("List = %v, %v", list, err)
	}
	if err := s.Delete(ref); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Has(ref); ok {
		t.Fatal("Has after Delete")
	}
	if _, _, err := s.Open(ref); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open after Delete: %v, want ErrNotFound", err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestInterruptedPutLeavesNothing(t *testing.T) {
	s := openStore(t)
	boom := errors.New("reader broke")
	_, _, err := s.Put(&failingReader{data: randomBytes(t, 1<<20), err: boom})
	if !errors.Is(err, boom) {
		t.Fatalf("Put error = %v, want %v", err, boom)
	}
	if files := dirEntries(t, s.Dir()); len(files) != 0 {
		t.Fatalf("files after failed put: %v", files)
	}
}

func TestAbandonedPutTempRemovedAtOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "blobs")
	s, err := OpenBlobStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ref := RefOf([]byte("keep me"))
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("keep"))
	p.Close()
	// A crash mid-put leaves a put- temp file behind.
	if err := os.WriteFile(filepath.Join(dir, "partial", "put-123"), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBlobStore(dir); err != nil {
		t.Fatal(err)
	}
	files := dirEntries(t, dir)
	if len(files) != 1 || files[0] != filepath.Join("partial", ref.String()) {
		t.Fatalf("files after reopen = %v; want only the fetch partial", files)
	}
}

// A fetch that ends before its first byte leaves no file: there is nothing to
// resume, and bad input must change no state.
func TestEmptyPartialLeavesNothing(t *testing.T) {
	s := openStore(t)
	ref := RefOf([]byte("never sent"))
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if files := dirEntries(t, s.Dir()); len(files) != 0 {
		t.Fatalf("files after an empty partial was closed: %v", files)
	}
	if parts, err := s.Partials(); err != nil || len(parts) != 0 {
		t.Fatalf("Partials = %v, %v", parts, err)
	}
	// The ref is free again for the next fetch.
	p, err = s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
}

func TestPartialInterruptedThenResumed(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 5<<20+3)
	ref := RefOf(data)
	half := len(data) / 2

	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != 0 {
		t.Fatalf("new partial size %d", p.Size())
	}
	if _, err := p.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil { // interrupted: kept for resume
		t.Fatal(err)
	}
	if _, ok, _ := s.Has(ref); ok {
		t.Fatal("an interrupted write left a final file")
	}
	parts, err := s.Partials()
	if err != nil || len(parts) != 1 || parts[0] != (BlobInfo{ref, int64(half)}) {
		t.Fatalf("Partials = %v, %v", parts, err)
	}

	// A new store over the same directory (a restart) resumes at the same offset.
	s2, err := OpenBlobStore(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	p, err = s2.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != int64(half) {
		t.Fatalf("resumed partial size %d, want %d", p.Size(), half)
	}
	if _, err := p.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	n, err := p.Finalize()
	if err != nil || n != int64(len(data)) {
		t.Fatalf("Finalize = %d, %v", n, err)
	}
	if got := readBlob(t, s2, ref); !bytes.Equal(got, data) {
		t.Fatal("resumed blob differs")
	}
	if parts, _ := s2.Partials(); len(parts) != 0 {
		t.Fatalf("partials left after finalize: %v", parts)
	}
}

func TestHashMismatchDiscardsPartial(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 1<<20)
	ref := RefOf(data)
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(data)
	bad[12345] ^= 1
	p.Write(bad)
	if _, err := p.Finalize(); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Finalize error = %v, want ErrHashMismatch", err)
	}
	if files := dirEntries(t, s.Dir()); len(files) != 0 {
		t.Fatalf("files after mismatch: %v", files)
	}
	// The ref is free again and a fresh fetch starts at 0.
	p, err = s.OpenPartial(ref)
	if err != nil || p.Size() != 0 {
		t.Fatalf("reopen after mismatch: size %v, err %v", p.Size(), err)
	}
	p.Discard()
}

// Verify checks the bytes without installing them: the blob is not held, the
// Partial takes no more bytes and still owns the ref, and Finalize then
// installs it. A mismatch found by Verify leaves nothing and frees the ref.
func TestVerifyThenFinalize(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 3<<20+5)
	ref := RefOf(data)
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data)
	if err := p.Verify(); err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(); err != nil {
		t.Fatalf("a second Verify: %v", err)
	}
	if _, held, _ := s.Has(ref); held {
		t.Fatal("held after Verify alone")
	}
	if _, err := p.Write([]byte("more")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Verify: %v, want ErrClosed", err)
	}
	if _, err := s.OpenPartial(ref); !errors.Is(err, ErrBusy) {
		t.Fatalf("OpenPartial while verified: %v, want ErrBusy", err)
	}
	if n, err := p.Finalize(); err != nil || n != int64(len(data)) {
		t.Fatalf("Finalize after Verify = %d, %v", n, err)
	}
	if got := readBlob(t, s, ref); !bytes.Equal(got, data) {
		t.Fatal("blob differs")
	}

	ref = RefOf(data[:4096])
	p, err = s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data[:4095])
	p.Write([]byte{data[4095] ^ 1})
	if err := p.Verify(); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Verify of wrong bytes: %v, want ErrHashMismatch", err)
	}
	if _, err := p.Finalize(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Finalize after a failed Verify: %v, want ErrClosed", err)
	}
	if parts, _ := s.Partials(); len(parts) != 0 {
		t.Fatalf("partials after a failed Verify: %v", parts)
	}
	if p, err = s.OpenPartial(ref); err != nil || p.Size() != 0 {
		t.Fatalf("reopen after a failed Verify: %v", err)
	}
	p.Discard()
}

func TestCorruptPartialPrefixIsCaught(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 1<<20)
	ref := RefOf(data)
	p, _ := s.OpenPartial(ref)
	p.Write(data[:1000])
	p.Close()
	// Flip a byte of the kept prefix on disk.
	path := filepath.Join(s.Dir(), "partial", ref.String())
	b, _ := os.ReadFile(path)
	b[10] ^= 0xff
	os.WriteFile(path, b, 0o600)

	p, _ = s.OpenPartial(ref)
	p.Write(data[1000:])
	if _, err := p.Finalize(); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Finalize over corrupt prefix: %v, want ErrHashMismatch", err)
	}
	if _, ok, _ := s.Has(ref); ok {
		t.Fatal("corrupt blob finalized")
	}
}

func TestOpenPartialIsExclusive(t *testing.T) {
	s := openStore(t)
	ref := RefOf([]byte("x"))
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenPartial(ref); !errors.Is(err, ErrBusy) {
		t.Fatalf("second OpenPartial: %v, want ErrBusy", err)
	}
	if err := s.DiscardPartial(ref); !errors.Is(err, ErrBusy) {
		t.Fatalf("DiscardPartial while open: %v, want ErrBusy", err)
	}
	p.Close()
	if _, err := p.Write([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v, want ErrClosed", err)
	}
	if err := s.DiscardPartial(ref); err != nil {
		t.Fatal(err)
	}
	if parts, _ := s.Partials(); len(parts) != 0 {
		t.Fatalf("partials after discard: %v", parts)
	}
}

func TestConcurrentPutsOfSameBytes(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 2<<20)
	const n = 16
	refs := make([]Ref, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { refs[i], _, errs[i] = s.Put(bytes.NewReader(data)) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || refs[i] != RefOf(data) {
			t.Fatalf("put %d: %s, %v", i, refs[i], errs[i])
		}
	}
	if got := readBlob(t, s, refs[0]); !bytes.Equal(got, data) {
		t.Fatal("blob differs after concurrent puts")
	}
	if files := dirEntries(t, s.Dir()); len(files) != 1 {
		t.Fatalf("files after concurrent puts: %v", files)
	}
	if blobs, bytes := s.Held(); blobs != 1 || bytes != int64(len(data)) {
		t.Fatalf("held after %d puts of one blob: %d blobs, %d bytes", n, blobs, bytes)
	}
}

// Both ways of installing refuse to replace a held blob and leave both files
// as they were; an absent target is renamed to.
func TestRenameNeverReplaces(t *testing.T) {
	s := openStore(t)
	for name, rename := range map[string]func(string, string) error{
		"renameat2":         renameNoReplace,
		"stat under a lock": s.renameUnlessHeld,
	} {
		dir := t.TempDir()
		tmp, final := filepath.Join(dir, "tmp"), filepath.Join(dir, "final")
		if err := errors.Join(os.WriteFile(tmp, []byte("new"), 0o600), os.WriteFile(final, []byte("old"), 0o600)); err != nil {
			t.Fatal(err)
		}
		err := rename(tmp, final)
		if errors.Is(err, errNoReplaceUnsupported) {
			t.Logf("%s: unsupported here", name)
			continue
		}
		if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("%s onto a file: %v, want fs.ErrExist", name, err)
		}
		a, errA := os.ReadFile(tmp)
		b, errB := os.ReadFile(final)
		if string(a) != "new" || string(b) != "old" || errA != nil || errB != nil {
			t.Fatalf("%s changed the files: %q %v, %q %v", name, a, errA, b, errB)
		}
		if err := os.Remove(final); err != nil {
			t.Fatal(err)
		}
		if err := rename(tmp, final); err != nil {
			t.Fatalf("%s onto nothing: %v", name, err)
		}
		if b, err := os.ReadFile(final); string(b) != "new" || err != nil {
			t.Fatalf("%s: final holds %q, %v", name, b, err)
		}
		if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: the source is still there: %v", name, err)
		}
	}
}

func TestConcurrentPutAndFinalizeOfSameBlob(t *testing.T) {
	s := openStore(t)
	data := randomBytes(t, 1<<20)
	ref := RefOf(data)
	p, err := s.OpenPartial(ref)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data)
	if _, _, err := s.Put(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if n, err := p.Finalize(); err != nil || n != int64(len(data)) {
		t.Fatalf("Finalize of a blob already held: %d, %v", n, err)
	}
	if files := dirEntries(t, s.Dir()); len(files) != 1 {
		t.Fatalf("files: %v", files)
	}
}

func TestListIgnoresStrangers(t *testing.T) {
	s := openStore(t)
	ref, _, err := s.Put(bytes.NewReader([]byte("real")))
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(s.Dir(), "zz"), 0o700)
	os.WriteFile(filepath.Join(s.Dir(), "zz", "notes.txt"), []byte("x"), 0o600)
	other := RefOf([]byte("misplaced")).String()
	os.WriteFile(filepath.Join(s.Dir(), "zz", other), []byte("misplaced"), 0o600)
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Ref != ref {
		t.Fatalf("List = %v, %v; want only %s", list, err, ref)
	}
}

func TestHeldCounts(t *testing.T) {
	s := openStore(t)
	a, _, _ := s.Put(bytes.NewReader(randomBytes(t, 1000)))
	s.Put(bytes.NewReader(randomBytes(t, 500)))
	s.Put(bytes.NewReader(randomBytes(t, 1000))) // a third, distinct
	data := randomBytes(t, 700)
	s.Put(bytes.NewReader(data))
	s.Put(bytes.NewReader(data)) // held already: not counted twice
	if n, b := s.Held(); n != 4 || b != 3200 {
		t.Fatalf("Held = %d, %d; want 4, 3200", n, b)
	}
	s.Delete(a)
	s.Delete(a) // gone already
	if n, b := s.Held(); n != 3 || b != 2200 {
		t.Fatalf("after delete: Held = %d, %d", n, b)
	}
	reopened, err := OpenBlobStore(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if n, b := reopened.Held(); n != 3 || b != 2200 {
		t.Fatalf("after reopen: Held = %d, %d", n, b)
	}
}

// BenchmarkInstallSmallBlobs stores 4 KiB blobs as fetches do (partial file,
// fsync, verify, rename, directory fsync), 4 at once like the server
// fetcher's default: the file system's ceiling for small_blobs_per_s, before
// any network or metadata work. It depends on the disk and on what was
// deleted there in the last minutes (ext4 without a journal skips recently
// freed inodes when it creates a file).
func BenchmarkInstallSmallBlobs(b *testing.B) {
	s, err := OpenBlobStore(filepath.Join(b.TempDir(), "blobs"))
	if err != nil {
		b.Fatal(err)
	}
	const fetchers = 4
	blobs := make([][]byte, b.N)
	for i := range blobs {
		blobs[i] = randomBytes(b, 4<<10)
	}
	b.SetBytes(4 << 10)
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range fetchers {
		wg.Go(func() {
			for i := w; i < b.N; i += fetchers {
				p, err := s.OpenPartial(RefOf(blobs[i]))
				if err == nil {
					_, err = p.Write(blobs[i])
				}
				if err == nil {
					_, err = p.Finalize()
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "blobs/s")
}

// The listing made at open is handed out once, and holds what was there
// then: not a blob stored since, nor a partial file.
func TestTakeOpenListing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "blobs")
	s, err := OpenBlobStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, b := randomBytes(t, 100), randomBytes(t, 200)
	refA, _, errA := s.Put(bytes.NewReader(a))
	refB, _, errB := s.Put(bytes.NewReader(b))
	p, errP := s.OpenPartial(RefOf([]byte("half")))
	if err := errors.Join(errA, errB, errP); err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("ha"))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if l := s.TakeOpenListing(); len(l) != 0 {
		t.Fatalf("an empty store's listing = %v", l)
	}

	s, err = OpenBlobStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Put(bytes.NewReader(randomBytes(t, 300))); err != nil {
		t.Fatal(err)
	}
	got := s.TakeOpenListing()
	slices.SortFunc(got, func(x, y BlobInfo) int { return int(x.Size - y.Size) })
	if want := []BlobInfo{{refA, 100}, {refB, 200}}; !slices.Equal(got, want) {
		t.Fatalf("listing = %v, want %v", got, want)
	}
	if again := s.TakeOpenListing(); again != nil {
		t.Fatalf("second take = %v, want nil", again)
	}
}
