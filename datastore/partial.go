package datastore

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/zeebo/blake3"
)

// A Partial is an open partial file: a blob being received, appended to at its
// end and hashed as it grows. Its bytes reach the file behind the writer (see
// appender), all of them by the time it ends. It is not safe for concurrent use.
type Partial struct {
	s    *BlobStore
	ref  Ref
	path string
	f    *os.File // nil once ended
	w    *appender
	h    *blake3.Hasher
	n    int64

	verified bool // Verify matched: the appender is finished
}

// Ref returns the BlobRef the partial file is expected to hash to.
func (p *Partial) Ref() Ref { return p.ref }

// Size returns how many bytes the partial file holds, those still being
// written included: the offset to resume from.
func (p *Partial) Size() int64 { return p.n }

// Write appends b to the partial file; not after Verify.
func (p *Partial) Write(b []byte) (int, error) {
	if p.f == nil || p.verified {
		return 0, ErrClosed
	}
	n, err := p.w.Write(b)
	p.n += int64(n)
	return n, err
}

// AvailableBuffer returns an empty slice whose capacity is the room left in
// the chunk the next bytes go into, as bufio.Writer's does: a caller that
// reads them from elsewhere can read them there and pass them to Write, which
// then copies nothing. It is valid until the next Write, and nil once the
// Partial is verified or ended.
func (p *Partial) AvailableBuffer() []byte {
	if p.f == nil || p.verified {
		return nil
	}
	return p.w.AvailableBuffer()
}

// sync writes what the appender still holds, fsyncs and closes the file.
func (p *Partial) sync() error {
	err := p.w.finish()
	if err == nil {
		err = p.f.Sync()
	}
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	p.f = nil
	return err
}

// Verify writes what the appender still holds, without waiting for the disk,
// and checks the partial file against its BlobRef. On a match the Partial
// stays open for Finalize; on a mismatch the file is removed and
// ErrHashMismatch returned; on any error the Partial is ended. A fetcher may
// report the blob as received once it is verified, and finalize behind.
func (p *Partial) Verify() error {
	if p.f == nil {
		return ErrClosed
	}
	if p.verified {
		return nil
	}
	if err := p.w.finish(); err != nil { // hashes the last bytes
		p.f.Close()
		p.f = nil
		p.end()
		return fmt.Errorf("verify %s: %w", p.ref, err)
	}
	want := p.ref.Digest()
	var got [DigestSize]byte
	p.h.Sum(got[:0])
	if !bytes.Equal(got[:], want[:]) {
		p.f.Close()
		p.f = nil
		defer p.end()
		if err := os.Remove(p.path); err != nil {
			return fmt.Errorf("verify %s: removing bad partial: %w", p.ref, err)
		}
		return fmt.Errorf("blob %s (%d bytes): %w", p.ref, p.n, ErrHashMismatch)
	}
	p.verified = true
	return nil
}

// Finalize verifies the partial file (see Verify) unless that was done,
// fsyncs it and makes it a held blob. On a mismatch the file is removed and
// ErrHashMismatch returned. Either way the Partial is ended.
func (p *Partial) Finalize() (int64, error) {
	if err := p.Verify(); err != nil {
		return 0, err
	}
	defer p.end()
	if err := p.sync(); err != nil {
		return 0, fmt.Errorf("finalize %s: %w", p.ref, err)
	}
	if err := p.s.install(p.path, p.ref, p.n); err != nil {
		return 0, fmt.Errorf("finalize %s: %w", p.ref, err)
	}
	return p.n, nil
}

// Discard removes the partial file and ends the Partial.
func (p *Partial) Discard() error {
	if p.f == nil {
		return ErrClosed
	}
	defer p.end()
	p.w.fail(ErrClosed) // nothing more is worth writing
	p.w.finish()
	p.f.Close()
	p.f = nil
	if err := os.Remove(p.path); err != nil {
		return fmt.Errorf("discard partial %s: %w", p.ref, err)
	}
	return nil
}

// Close fsyncs and keeps the partial file for a later resume, and ends the
// Partial; an empty partial file, with nothing to resume, is removed. Closing
// an ended Partial does nothing.
func (p *Partial) Close() error {
	if p.f == nil {
		return nil
	}
	defer p.end()
	if p.n == 0 {
		p.w.finish()
		p.f.Close()
		p.f = nil
		if err := os.Remove(p.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove empty partial %s: %w", p.ref, err)
		}
		return nil
	}
	return p.sync()
}

func (p *Partial) end() { p.s.release(p.ref) }
