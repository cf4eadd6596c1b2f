package datastore

import (
	"errors"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

func TestRefOfIsCanonicalBlake3RawCID(t *testing.T) {
	ref := RefOf([]byte("hello"))
	s := ref.String()
	if !strings.HasPrefix(s, "bafkr4i") {
		t.Fatalf("RefOf string %q does not start with bafkr4i", s)
	}
	back, err := ParseRef(s)
	if err != nil || back != ref {
		t.Fatalf("ParseRef(%q) = %v, %v; want %v", s, back, err, ref)
	}
	fromBytes, err := RefFromBytes(ref.Bytes())
	if err != nil || fromBytes != ref {
		t.Fatalf("RefFromBytes = %v, %v; want %v", fromBytes, err, ref)
	}
	if RefOf([]byte("hello")) != ref || RefOf([]byte("hellO")) == ref {
		t.Fatal("RefOf is not a function of the bytes")
	}
	// Another multibase of the same CID parses to the same canonical Ref.
	b58, err := ref.c.StringOfBase('z')
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ParseRef(b58); err != nil || r.String() != s {
		t.Fatalf("ParseRef(base58) = %v, %v; want %s", r, err, s)
	}
}

func TestParseRefRejects(t *testing.T) {
	good := RefOf([]byte("x"))
	digest := good.Digest()
	sha, _ := mh.Sum([]byte("x"), mh.SHA2_256, -1)
	short, _ := mh.Encode(digest[:16], mh.BLAKE3)
	cases := map[string]string{
		"empty":          "",
		"garbage":        "not-a-cid",
		"path":           "../../etc/passwd",
		"path in cid":    good.String() + "/x",
		"dag-pb codec":   cid.NewCidV1(cid.DagProtobuf, good.c.Hash()).String(),
		"sha256 hash":    cid.NewCidV1(cid.Raw, sha).String(),
		"short blake3":   cid.NewCidV1(cid.Raw, short).String(),
		"cidv0":          cid.NewCidV0(sha).String(),
		"too long":       strings.Repeat("b", 500),
		"truncated cid":  good.String()[:40],
		"trailing bytes": good.String() + "aa",
	}
	for name, s := range cases {
		if _, err := ParseRef(s); !errors.Is(err, ErrBadRef) {
			t.Errorf("%s: ParseRef(%q) error = %v, want ErrBadRef", name, s, err)
		}
	}
	for name, b := range map[string][]byte{
		"empty":    nil,
		"trailing": append(good.Bytes(), 0),
		"sha256":   cid.NewCidV1(cid.Raw, sha).Bytes(),
		"junk":     []byte{1, 2, 3},
	} {
		if _, err := RefFromBytes(b); !errors.Is(err, ErrBadRef) {
			t.Errorf("%s: RefFromBytes error = %v, want ErrBadRef", name, err)
		}
	}
}

func FuzzRefFromBytes(f *testing.F) {
	f.Add(RefOf([]byte("seed")).Bytes())
	f.Add([]byte{0x01, 0x55, 0x1e, 0x20})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ref, err := RefFromBytes(b)
		if err != nil {
			if !errors.Is(err, ErrBadRef) {
				t.Fatalf("error %v is not ErrBadRef", err)
			}
			return
		}
		// Whatever parses is canonical and round-trips.
		again, err := ParseRef(ref.String())
		if err != nil || again != ref {
			t.Fatalf("round trip of %s: %v, %v", ref, again, err)
		}
		if strings.ContainsAny(ref.String(), "/\\.") {
			t.Fatalf("ref string %q has path characters", ref)
		}
	})
}
