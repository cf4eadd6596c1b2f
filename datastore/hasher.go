package datastore

import (
	"math/bits"

	"lukechampine.com/blake3/guts"
)

// A serialHasher computes the unkeyed BLAKE3 digest of what is written to it
// on the calling goroutine alone, 16 chunks at a time with SIMD where the CPU
// has it. blake3.Hasher spreads a large Write over dozens of goroutines (64
// per MiB): on two cores they queue ahead of the stream's own goroutines, and
// a fetch, paced by yamux's window, waits for them. Same digest, one core's
// speed (BLAKE3 ≈ 1.6–3.3 GB/s per core here), behind the stream.
type serialHasher struct {
	stack   [64][8]uint32 // subtree roots, at most one per height
	counter uint64        // chunks pushed; bit i set iff stack[i] holds a subtree
	buf     [group]byte   // the last bytes written, never compressed before more come
	buflen  int
}

// group is how many bytes one SIMD compression takes: guts.MaxSIMD chunks.
const group = guts.MaxSIMD * guts.ChunkSize

func newSerialHasher() *serialHasher { return &serialHasher{} }

// Write hashes p. The last bytes stay buffered until more arrive, since the
// last chunk is compressed differently (Sum).
func (h *serialHasher) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if h.buflen == group { // and more follows: the buffer is no longer last
			h.push((*[group]byte)(h.buf[:]))
			h.buflen = 0
		}
		for h.buflen == 0 && len(p) > group { // straight from p, keeping some for the buffer
			h.push((*[group]byte)(p[:group]))
			p = p[group:]
		}
		k := copy(h.buf[h.buflen:], p)
		h.buflen += k
		p = p[k:]
	}
	return n, nil
}

// push hashes a whole group of chunks as one subtree of height 4. counter is
// always a multiple of MaxSIMD here: Sum alone pushes single chunks.
func (h *serialHasher) push(b *[group]byte) {
	pushSubtree(&h.stack, &h.counter, guts.ChainingValue(guts.CompressBuffer(b, group, &guts.IV, h.counter, 0)), bits.TrailingZeros(guts.MaxSIMD))
}

// pushSubtree adds the subtree cv of height to the stack of subtree roots,
// merging equal heights, and counts its chunks.
func pushSubtree(stack *[64][8]uint32, counter *uint64, cv [8]uint32, height int) {
	i := height
	for *counter&(1<<i) != 0 {
		cv = guts.ChainingValue(guts.ParentNode(stack[i], cv, &guts.IV, 0))
		i++
	}
	stack[i] = cv
	*counter += 1 << height
}

// Sum appends the 32-byte digest of everything written to b. It does not
// change the hasher's state: it works on a copy of the stack, not of the
// whole hasher, whose 16 KiB buffer would grow the goroutine's stack.
func (h *serialHasher) Sum(b []byte) []byte {
	stack, counter := h.stack, h.counter
	rest := h.buf[:h.buflen]
	for len(rest) > guts.ChunkSize { // every chunk but the last
		pushSubtree(&stack, &counter, guts.ChainingValue(guts.CompressChunk(rest[:guts.ChunkSize], &guts.IV, counter, 0)), 0)
		rest = rest[guts.ChunkSize:]
	}
	n := guts.CompressChunk(rest, &guts.IV, counter, 0)
	for i := bits.TrailingZeros64(counter); i < bits.Len64(counter); i++ {
		if counter&(1<<i) != 0 {
			n = guts.ParentNode(stack[i], guts.ChainingValue(n), &guts.IV, 0)
		}
	}
	n.Flags |= guts.FlagRoot
	out := guts.WordsToBytes(guts.CompressNode(n))
	return append(b, out[:DigestSize]...)
}
