package fetcher

import (
	"cmp"
	"container/heap"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestHeapInvariants runs a long random mix of push, pop, remove and fix
// against a sorted list, checking order and positions after every step.
func TestHeapInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h stateHeap
	var list []*state // sorted by next
	insert := func(s *state) {
		i, _ := slices.BinarySearchFunc(list, s.next, func(x *state, n int64) int { return cmp.Compare(x.next, n) })
		list = slices.Insert(list, i, s)
	}
	removeFromList := func(s *state) { list = slices.DeleteFunc(list, func(x *state) bool { return x == s }) }
	for step := range 200_000 {
		switch op := r.IntN(5); {
		case op <= 1 || len(h) == 0:
			s := &state{next: r.Int64N(1 << 40)}
			heap.Push(&h, s)
			insert(s)
		case op == 2:
			s := heap.Pop(&h).(*state)
			if s.next != list[0].next || s.index != -1 {
				t.Fatalf("step %d: Pop gave next %d (index %d), list's first is %d", step, s.next, s.index, list[0].next)
			}
			removeFromList(s)
		case op == 3:
			s := list[r.IntN(len(list))]
			if got := heap.Remove(&h, int(s.index)).(*state); got != s {
				t.Fatalf("step %d: Remove at %d removed another state", step, s.index)
			}
			removeFromList(s)
		default: // move a state's time, as Expedite and requeueing do
			s := list[r.IntN(len(list))]
			removeFromList(s)
			s.next = r.Int64N(1 << 40)
			heap.Fix(&h, int(s.index))
			insert(s)
		}
		if len(h) != len(list) {
			t.Fatalf("step %d: heap holds %d, list %d", step, len(h), len(list))
		}
		if len(h) > 0 && h[0].next != list[0].next {
			t.Fatalf("step %d: heap root %d is not the earliest %d", step, h[0].next, list[0].next)
		}
		if step%1000 == 0 {
			for i, s := range h {
				if int(s.index) != i {
					t.Fatalf("step %d: state at %d records index %d", step, i, s.index)
				}
				if i > 0 && h[(i-1)/2].next > s.next {
					t.Fatalf("step %d: heap order broken at %d", step, i)
				}
			}
			k := r.IntN(50)
			got := h.earliest(k)
			if len(got) != min(k, len(list)) {
				t.Fatalf("step %d: earliest(%d) gave %d", step, k, len(got))
			}
			for i := range got {
				if got[i].next != list[i].next {
					t.Fatalf("step %d: earliest(%d)[%d] = %d, want %d", step, k, i, got[i].next, list[i].next)
				}
			}
		}
	}
}
