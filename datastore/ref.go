// Package datastore keeps what a blobsync peer knows on disk: blob content in a
// verified, content-addressed blob store, and metadata (signposts, blob metadata)
// on a go-datastore.
package datastore

import (
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"github.com/zeebo/blake3"
)

// DigestSize is the length in bytes of a BlobRef's BLAKE3 digest.
const DigestSize = 32

// A Ref (BlobRef) names a blob by its content: a CIDv1 with codec raw and a
// BLAKE3-256 multihash of the blob's bytes. The zero Ref is undefined.
//
// Refs are comparable and may be used as map keys.
type Ref struct {
	c cid.Cid
}

// RefOf returns the Ref of data.
func RefOf(data []byte) Ref {
	return RefFromDigest(blake3.Sum256(data))
}

// NewHasher returns a hash.Hash whose Sum is the digest RefFromDigest expects.
// It hashes on the calling goroutine alone, with SIMD where the CPU has it:
// on the two cores a fetch shares with its stream, a hasher that fans out over
// goroutines only queues them ahead of the stream's own. Measured here
// (BenchmarkHasher): 3.6–3.7 GB/s on 1 MiB writes, 4 µs for a 4 KiB blob on a
// new goroutine, against 3.0–3.2 GB/s and 12 µs for the 16-way AVX-512
// hasher this replaced.
func NewHasher() *blake3.Hasher { return blake3.New() }

// RefFromDigest returns the Ref whose multihash holds digest.
func RefFromDigest(digest [DigestSize]byte) Ref {
	m, err := mh.Encode(digest[:], mh.BLAKE3)
	if err != nil {
		panic(fmt.Sprintf("datastore: encoding a blake3 multihash: %v", err)) // cannot happen: fixed code and length
	}
	return Ref{c: cid.NewCidV1(cid.Raw, m)}
}

// ParseRef parses the string form of a BlobRef. Any multibase encoding of a
// valid BlobRef is accepted; String always gives the canonical base32 form.
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, fmt.Errorf("%w: empty", ErrBadRef)
	}
	if len(s) > maxRefString {
		return Ref{}, fmt.Errorf("%w: %d characters is too long", ErrBadRef, len(s))
	}
	c, err := cid.Decode(s)
	if err != nil {
		return Ref{}, fmt.Errorf("%w: %q is not a CID", ErrBadRef, s)
	}
	return refFromCid(c)
}

// RefFromBytes parses the binary form of a BlobRef, as carried on the wire.
func RefFromBytes(b []byte) (Ref, error) {
	if len(b) == 0 {
		return Ref{}, fmt.Errorf("%w: empty", ErrBadRef)
	}
	if len(b) > maxRefBytes {
		return Ref{}, fmt.Errorf("%w: %d bytes is too long", ErrBadRef, len(b))
	}
	c, err := cid.Cast(b)
	if err != nil {
		return Ref{}, fmt.Errorf("%w: not a binary CID", ErrBadRef)
	}
	return refFromCid(c)
}

func refFromCid(c cid.Cid) (Ref, error) {
	if c.Version() != 1 {
		return Ref{}, fmt.Errorf("%w: CID version %d, want 1", ErrBadRef, c.Version())
	}
	if c.Type() != cid.Raw {
		return Ref{}, fmt.Errorf("%w: codec 0x%x, want raw (0x55)", ErrBadRef, c.Type())
	}
	d, err := mh.Decode(c.Hash())
	if err != nil {
		return Ref{}, fmt.Errorf("%w: bad multihash", ErrBadRef)
	}
	if d.Code != mh.BLAKE3 || d.Length != DigestSize || len(d.Digest) != DigestSize {
		return Ref{}, fmt.Errorf("%w: hash must be blake3-256", ErrBadRef)
	}
	var digest [DigestSize]byte
	copy(digest[:], d.Digest)
	return RefFromDigest(digest), nil // re-encode: one canonical Ref per digest
}

// Defined reports whether r names a blob (the zero Ref does not).
func (r Ref) Defined() bool { return r.c.Defined() }

// String returns the canonical base32 form ("bafkr4i…"), safe as a file name.
func (r Ref) String() string {
	if !r.Defined() {
		return "<undefined>"
	}
	return r.c.String()
}

// Bytes returns the binary CID, as carried on the wire.
func (r Ref) Bytes() []byte { return r.c.Bytes() }

// Digest returns the BLAKE3-256 digest r names.
func (r Ref) Digest() [DigestSize]byte {
	var out [DigestSize]byte
	h := r.c.Hash()
	copy(out[:], h[len(h)-DigestSize:])
	return out
}

// MarshalText implements encoding.TextMarshaler (JSON output uses the string form).
func (r Ref) MarshalText() ([]byte, error) {
	if !r.Defined() {
		return nil, errors.New("datastore: marshalling an undefined Ref")
	}
	return []byte(r.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Ref) UnmarshalText(b []byte) error {
	p, err := ParseRef(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}

const (
	maxRefString = 128 // canonical form is 59 characters
	maxRefBytes  = 64  // binary form is 36 bytes
)

// CID returns the BlobRef as a CID, the key of its DHT provider records.
func (r Ref) CID() cid.Cid { return r.c }
