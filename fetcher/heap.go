package fetcher

import (
	"container/heap"

	"github.com/blobsync/blobsync/datastore"
)

// state is one blob the Fetcher is to fetch. Its fields are guarded by
// Fetcher.mu, except that while the blob is in flight only its fetching
// goroutine touches attempts.
type state struct {
	ref      datastore.Ref
	next     int64  // when to attempt next, in Unix nanoseconds
	attempts uint32 // attempts made, persisted in the signpost
	index    int32  // position in the heap; -1 while being fetched
	stopped  bool   // StopFetching was called: no more attempts
	expedite bool   // Expedite was called while in flight: retry a failure at once
	failed   bool   // Failed was called while in flight: the attempt failed with lastErr
	lastErr  error
}

// stateHeap orders states by next attempt, earliest first; it keeps each
// state's index so a state can be moved or removed (heap.Fix, heap.Remove).
type stateHeap []*state

var _ heap.Interface = (*stateHeap)(nil)

func (h stateHeap) Len() int           { return len(h) }
func (h stateHeap) Less(i, j int) bool { return h[i].next < h[j].next }
func (h stateHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = int32(i)
	h[j].index = int32(j)
}

func (h *stateHeap) Push(x any) {
	s := x.(*state)
	s.index = int32(len(*h))
	*h = append(*h, s)
}

func (h *stateHeap) Pop() any {
	old := *h
	n := len(old)
	s := old[n-1]
	old[n-1] = nil // let the state go when it is done
	s.index = -1
	*h = old[:n-1]
	return s
}

// earliest returns up to k states in order of next attempt, without changing
// the heap: it walks the heap from its root, always expanding the earliest
// state seen, in O(k log k).
func (h stateHeap) earliest(k int) []*state {
	if k <= 0 || len(h) == 0 {
		return nil
	}
	out := make([]*state, 0, min(k, len(h)))
	frontier := indexHeap{h: h, idx: []int{0}}
	for len(out) < k && len(frontier.idx) > 0 {
		i := heap.Pop(&frontier).(int)
		out = append(out, h[i])
		for _, c := range []int{2*i + 1, 2*i + 2} {
			if c < len(h) {
				heap.Push(&frontier, c)
			}
		}
	}
	return out
}

// indexHeap is a heap of positions in a stateHeap, by their states' next attempt.
type indexHeap struct {
	h   stateHeap
	idx []int
}

func (x indexHeap) Len() int           { return len(x.idx) }
func (x indexHeap) Less(i, j int) bool { return x.h[x.idx[i]].next < x.h[x.idx[j]].next }
func (x indexHeap) Swap(i, j int)      { x.idx[i], x.idx[j] = x.idx[j], x.idx[i] }
func (x *indexHeap) Push(v any)        { x.idx = append(x.idx, v.(int)) }
func (x *indexHeap) Pop() any {
	v := x.idx[len(x.idx)-1]
	x.idx = x.idx[:len(x.idx)-1]
	return v
}
