package datastore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// BlobStore keeps blob content under one directory:
//
//	<dir>/<2 chars>/<BlobRef>   verified blobs (the 2 chars are the BlobRef's next-to-last two)
//	<dir>/partial/<BlobRef>     fetches in progress, kept across restarts for resume
//	<dir>/partial/put-*         local puts in progress (removed on error and at open)
//
// Every blob is written to partial/, fsynced, verified against its BlobRef and only
// then renamed to its final name, with the directory fsynced: nothing unverified
// ever sits under a final name. BlobStore is safe for concurrent use; one process
// owns a directory at a time.
type BlobStore struct {
	dir        string
	partialDir string

	mu      sync.Mutex
	writing map[Ref]struct{} // refs whose partial file is open

	renameMu sync.Mutex // where renameNoReplace is unsupported: serializes installs

	held, heldBytes atomic.Int64 // verified blobs held, and their bytes
	atOpen          []BlobInfo   // the listing made at open, until taken; under mu
}

const (
	partialDirName = "partial"
	putTempPrefix  = "put-"
	copyBufSize    = 256 << 10
)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// OpenBlobStore opens (creating if needed) the blob store in dir and removes
// abandoned local-put temp files. Partial fetch files are kept for resume.
func OpenBlobStore(dir string) (*BlobStore, error) {
	s := &BlobStore{dir: dir, partialDir: filepath.Join(dir, partialDirName), writing: map[Ref]struct{}{}}
	if err := os.MkdirAll(s.partialDir, 0o700); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	ents, err := os.ReadDir(s.partialDir)
	if err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), putTempPrefix) {
			if err := os.Remove(filepath.Join(s.partialDir, e.Name())); err != nil {
				return nil, fmt.Errorf("blob store: removing abandoned put: %w", err)
			}
		}
	}
	blobs, err := s.List()
	if err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	for _, b := range blobs {
		s.held.Add(1)
		s.heldBytes.Add(b.Size)
	}
	s.atOpen = blobs
	return s, nil
}

// TakeOpenListing returns the blobs held when the store was opened, from the
// listing made then to count them, and forgets it; later calls return nil.
// A start-up pass needs no second walk of the store, and sees no blob
// installed since the open.
func (s *BlobStore) TakeOpenListing() []BlobInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.atOpen
	s.atOpen = nil
	return l
}

// Held returns how many verified blobs the store holds and their bytes,
// without listing them.
func (s *BlobStore) Held() (blobs, bytes int64) { return s.held.Load(), s.heldBytes.Load() }

// Dir returns the store's directory.
func (s *BlobStore) Dir() string { return s.dir }

func (s *BlobStore) finalPath(ref Ref) string {
	name := ref.String()
	return filepath.Join(s.dir, name[len(name)-3:len(name)-1], name)
}

func (s *BlobStore) partialPath(ref Ref) string {
	return filepath.Join(s.partialDir, ref.String())
}

// Put stores the bytes read from r and returns their BlobRef and size. Storing
// bytes already held is harmless, also concurrently.
func (s *BlobStore) Put(r io.Reader) (Ref, int64, error) {
	f, err := os.CreateTemp(s.partialDir, putTempPrefix+"*")
	if err != nil {
		return Ref{}, 0, fmt.Errorf("put: %w", err)
	}
	tmp := f.Name()
	ref, n, err := writeAndHash(f, r)
	if err != nil {
		_ = os.Remove(tmp)
		return Ref{}, 0, fmt.Errorf("put: %w", err)
	}
	if err := s.install(tmp, ref, n); err != nil {
		_ = os.Remove(tmp)
		return Ref{}, 0, fmt.Errorf("put: %w", err)
	}
	return ref, n, nil
}

// writeAndHash copies r into f while hashing, fsyncs and closes f.
func writeAndHash(f *os.File, r io.Reader) (Ref, int64, error) {
	h := NewHasher()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	w := &writebackWriter{f: f}
	n, err := io.CopyBuffer(io.MultiWriter(w, h), r, *bp)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Ref{}, 0, err
	}
	var d [DigestSize]byte
	h.Sum(d[:0])
	return RefFromDigest(d), n, nil
}

// writebackChunk is how much a put writes between writeback starts.
const writebackChunk = 32 << 20

// writebackWriter writes to f, starting writeback every writebackChunk.
type writebackWriter struct {
	f        *os.File
	n, flush int64
}

func (w *writebackWriter) Write(b []byte) (int, error) {
	n, err := w.f.Write(b)
	w.n += int64(n)
	if w.n-w.flush >= writebackChunk {
		startWriteback(w.f, w.flush, w.n-w.flush)
		w.flush = w.n
	}
	return n, err
}

// install renames the verified file at tmp, of size bytes, to ref's final
// name and fsyncs the directories it changed. If the blob is already held,
// tmp is removed.
func (s *BlobStore) install(tmp string, ref Ref, size int64) error {
	final := s.finalPath(ref)
	shard := filepath.Dir(final)
	if _, err := os.Stat(shard); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(shard, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := syncDir(s.dir); err != nil {
			return err
		}
	}
	// Of two installs of the same bytes one renames and counts, and the
	// other finds the blob held; no lock is held across the rename.
	err := renameNoReplace(tmp, final)
	if errors.Is(err, errNoReplaceUnsupported) {
		err = s.renameUnlessHeld(tmp, final)
	}
	if errors.Is(err, fs.ErrExist) {
		return os.Remove(tmp) // same bytes already held
	}
	if err != nil {
		return err
	}
	s.held.Add(1)
	s.heldBytes.Add(size)
	// The final name must survive a crash; the partial directory need not be
	// synced: a complete partial file that reappears is verified and
	// installed again (or dropped, as the blob is held).
	return syncDir(shard)
}

// renameUnlessHeld renames tmp to final unless final exists (fs.ErrExist),
// for file systems without an atomic rename that refuses to replace.
func (s *BlobStore) renameUnlessHeld(tmp, final string) error {
	s.renameMu.Lock()
	defer s.renameMu.Unlock()
	if _, err := os.Stat(final); err == nil {
		return fs.ErrExist
	}
	return os.Rename(tmp, final)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Has reports whether the verified blob is held, and its size.
func (s *BlobStore) Has(ref Ref) (int64, bool, error) {
	fi, err := os.Stat(s.finalPath(ref))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return fi.Size(), true, nil
}

// Open opens a held blob for reading. It returns ErrNotFound if it is not held.
func (s *BlobStore) Open(ref Ref) (*os.File, int64, error) {
	f, err := os.Open(s.finalPath(ref))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("blob %s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// Delete removes a held blob. Deleting a blob that is not held is not an error.
func (s *BlobStore) Delete(ref Ref) error {
	p := s.finalPath(ref)
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile, and counted by whoever did
		}
		return err
	}
	s.held.Add(-1)
	s.heldBytes.Add(-fi.Size())
	return syncDir(filepath.Dir(p))
}

// BlobInfo describes a held blob or a partial file.
type BlobInfo struct {
	Ref  Ref   `json:"ref"`
	Size int64 `json:"size"`
}

// List returns every verified blob held, in no particular order. Files whose
// names are not BlobRefs in their right shard are ignored.
func (s *BlobStore) List() ([]BlobInfo, error) {
	shards, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []BlobInfo
	for _, sh := range shards {
		if !sh.IsDir() || len(sh.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(s.dir, sh.Name()))
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			ref, err := ParseRef(e.Name())
			if err != nil || ref.String() != e.Name() || s.finalPath(ref) != filepath.Join(s.dir, sh.Name(), e.Name()) {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue // removed meanwhile
			}
			out = append(out, BlobInfo{Ref: ref, Size: fi.Size()})
		}
	}
	return out, nil
}

// Partials returns the partial fetch files kept for resume.
func (s *BlobStore) Partials() ([]BlobInfo, error) {
	ents, err := os.ReadDir(s.partialDir)
	if err != nil {
		return nil, err
	}
	var out []BlobInfo
	for _, e := range ents {
		ref, err := ParseRef(e.Name())
		if err != nil || ref.String() != e.Name() {
			continue
		}
		if fi, err := e.Info(); err == nil {
			out = append(out, BlobInfo{Ref: ref, Size: fi.Size()})
		}
	}
	return out, nil
}

// OpenPartial opens (creating if needed) the partial file for ref, ready to
// append at its end. The bytes already there are hashed, so Finalize verifies
// the whole blob. Only one Partial per ref may be open: others get ErrBusy.
// The caller must end it with Finalize, Discard or Close.
func (s *BlobStore) OpenPartial(ref Ref) (*Partial, error) {
	if !ref.Defined() {
		return nil, fmt.Errorf("open partial: %w: undefined", ErrBadRef)
	}
	s.mu.Lock()
	if _, busy := s.writing[ref]; busy {
		s.mu.Unlock()
		return nil, fmt.Errorf("blob %s: %w", ref, ErrBusy)
	}
	s.writing[ref] = struct{}{}
	s.mu.Unlock()

	p, err := s.openPartial(ref)
	if err != nil {
		s.release(ref)
		return nil, err
	}
	return p, nil
}

func (s *BlobStore) openPartial(ref Ref) (*Partial, error) {
	path := s.partialPath(ref)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("partial %s: %w", ref, err)
	}
	h := NewHasher()
	bp := copyBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(h, f, *bp) // leaves the offset at the end
	copyBufs.Put(bp)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("partial %s: %w", ref, err)
	}
	return &Partial{s: s, ref: ref, path: path, f: f, w: newAppender(f, path, n, h), h: h, n: n}, nil
}

func (s *BlobStore) release(ref Ref) {
	s.mu.Lock()
	delete(s.writing, ref)
	s.mu.Unlock()
}

// DiscardPartial removes ref's partial file, unless a fetch has it open (ErrBusy).
func (s *BlobStore) DiscardPartial(ref Ref) error {
	p, err := s.OpenPartial(ref)
	if err != nil {
		return err
	}
	return p.Discard()
}
