package datastore

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// The serial hasher gives blake3's digest for every length around chunk and
// group boundaries, however the bytes are split into writes.
func TestSerialHasherMatchesBlake3(t *testing.T) {
	data := randomBytes(t, 5*group+3*1024+17)
	rng := rand.New(rand.NewPCG(1, 2))
	var lengths []int
	for _, base := range []int{0, 1024, group, 2 * group, 4 * group, 5 * group} {
		for _, d := range []int{-1025, -1024, -1023, -1, 0, 1, 1023, 1024, 1025} {
			if n := base + d; n >= 0 && n <= len(data) {
				lengths = append(lengths, n)
			}
		}
	}
	for range 50 {
		lengths = append(lengths, rng.IntN(len(data)+1))
	}
	for _, n := range lengths {
		want := NewHasher()
		want.Write(data[:n])
		for _, split := range []int{1 << 30, 1, 1000, 1024, group, group + 1, 3 * group} {
			h := newSerialHasher()
			for b := data[:n]; len(b) > 0; {
				k := min(len(b), split, 1+rng.IntN(2*split))
				h.Write(b[:k])
				b = b[k:]
			}
			if got := h.Sum(nil); !bytes.Equal(got, want.Sum(nil)) {
				t.Fatalf("%d bytes in writes of up to %d: digest %x, want %x", n, split, got, want.Sum(nil))
			}
		}
	}
}

// Sum leaves the state as it was: more bytes may follow.
func TestSerialHasherSumThenWrite(t *testing.T) {
	data := randomBytes(t, 3*group+5)
	h := newSerialHasher()
	h.Write(data[:group+7])
	h.Sum(nil)
	h.Write(data[group+7:])
	want := NewHasher()
	want.Write(data)
	if !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		t.Fatal("a Sum midway changed the digest")
	}
}

func BenchmarkSerialHasher(b *testing.B) {
	data := randomBytes(b, 1<<20)
	b.SetBytes(int64(len(data)))
	h := newSerialHasher()
	for b.Loop() {
		h.Write(data)
	}
}

// BenchmarkSerialHasherSmall hashes a 4 KiB blob on a new goroutine, as each
// fetch does: Sum's working set decides whether the goroutine's stack grows.
func BenchmarkSerialHasherSmall(b *testing.B) {
	data := randomBytes(b, 4<<10)
	b.SetBytes(int64(len(data)))
	done := make(chan struct{})
	for b.Loop() {
		go func() {
			h := newSerialHasher()
			h.Write(data)
			var d [DigestSize]byte
			h.Sum(d[:0])
			done <- struct{}{}
		}()
		<-done
	}
}
