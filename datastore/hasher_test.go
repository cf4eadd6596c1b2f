package datastore

import (
	"encoding/hex"
	"testing"
)

// blake3Vectors are digests from BLAKE3's official test vectors
// (test_vectors.json): the input of each is n bytes, byte i being i % 251.
var blake3Vectors = []struct {
	n      int
	digest string
}{
	{0, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
	{1, "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"},
	{1023, "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11"},
	{1024, "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"},
	{1025, "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"},
	{2048, "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a"},
	{2049, "5f4d72f40d7a5f82b15ca2b2e44b1de3c2ef86c426c95c1af0b6879522563030"},
	{4096, "015094013f57a5277b59d8475c0501042c0b642e531b0a1c8f58d2163229e969"},
	{4097, "9b4052b38f1c5fc8b1f9ff7ac7b27cd242487b3d890d15c96a1c25b8aa0fb995"},
	{8192, "aae792484c8efe4f19e2ca7d371d8c467ffb10748d8a5a1ae579948f718a2a63"},
	{8193, "bab6c09cb8ce8cf459261398d2e7aef35700bf488116ceb94a36d0f5f1b7bc3b"},
	{16384, "f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4"},
	{31744, "62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47"},
	{100000, "d93c23eedaf165a7e0be908ba86f1a7a520d568d2d13cde787c8580c5c72cc54"},
}

// NewHasher and RefOf give BLAKE3's digest however the bytes are split into
// writes (the appender hands over 1 MiB chunks, a resume whatever the partial
// file holds), and a Sum midway changes nothing.
func TestHasherMatchesBlake3Vectors(t *testing.T) {
	for _, v := range blake3Vectors {
		data := make([]byte, v.n)
		for i := range data {
			data[i] = byte(i % 251)
		}
		if got := RefOf(data).Digest(); hex.EncodeToString(got[:]) != v.digest {
			t.Fatalf("RefOf(%d bytes) digest %x, want %s", v.n, got, v.digest)
		}
		for _, split := range []int{1, 1000, 1024, 1025, 8192, 1 << 30} {
			h := NewHasher()
			for b := data; len(b) > 0; {
				k := min(len(b), split)
				h.Write(b[:k])
				h.Sum(nil)
				b = b[k:]
			}
			if got := h.Sum(nil); hex.EncodeToString(got) != v.digest {
				t.Fatalf("%d bytes in writes of %d: digest %x, want %s", v.n, split, got, v.digest)
			}
		}
	}
}

func BenchmarkHasher(b *testing.B) {
	data := randomBytes(b, 1<<20)
	b.SetBytes(int64(len(data)))
	h := NewHasher()
	for b.Loop() {
		h.Write(data)
	}
}

// BenchmarkHasherSmall hashes a 4 KiB blob on a new goroutine, as each fetch
// does: the hasher's working set decides whether the goroutine's stack grows.
func BenchmarkHasherSmall(b *testing.B) {
	data := randomBytes(b, 4<<10)
	b.SetBytes(int64(len(data)))
	done := make(chan struct{})
	for b.Loop() {
		go func() {
			h := NewHasher()
			h.Write(data)
			var d [DigestSize]byte
			h.Sum(d[:0])
			done <- struct{}{}
		}()
		<-done
	}
}
