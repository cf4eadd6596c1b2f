package protocol

import (
	"bytes"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

func take(offered map[string]int32) map[string]int32 { return offered }

// streamsBetween counts the blob protocol streams h has open to p.
func streamsBetween(h interface {
	Network() network.Network
}, p peer.ID) int {
	n := 0
	for _, c := range h.Network().ConnsToPeer(p) {
		for _, st := range c.GetStreams() {
			if st.Protocol() == ID {
				n++
			}
		}
	}
	return n
}

// Fetches acknowledged on their stream reuse it: one stream for several
// blobs. A kept stream the responder dropped is replaced without an error,
// and Close closes the kept ones, which ends the responder's handlers.
func TestAcknowledgedStreamsAreReused(t *testing.T) {
	a := newServing(t, false)
	streams := countStreams(a)
	b := newFetching(t, a.h, false)
	fetch := func() {
		t.Helper()
		data := randomBytes(t, 4096)
		ref := a.put(t, data, true)
		got, err := b.client.Fetch(t.Context(), a.h.ID(), ref, b.store, GetOptions{Take: take})
		if err != nil || got.Ack.Err != nil {
			t.Fatalf("Fetch = %+v, %v", got, err)
		}
		if !bytes.Equal(b.held(t, ref), data) {
			t.Fatal("the fetched bytes differ")
		}
	}
	for range 3 {
		fetch()
	}
	if n, opened := streams.Load(), b.client.Stats().StreamsOpened; n != 1 || opened != 1 {
		t.Fatalf("3 fetches one after another: %d streams served, %d opened; want 1", n, opened)
	}
	if got := a.srv.Stats().BlobsServed; got != 3 {
		t.Fatalf("%d blobs served, want 3", got)
	}

	// The responder drops the stream (as it does after keptStreamWait).
	for _, c := range a.h.Network().ConnsToPeer(b.h.ID()) {
		for _, st := range c.GetStreams() {
			st.Reset()
		}
	}
	fetch()
	if n, opened := streams.Load(), b.client.Stats().StreamsOpened; n != 2 || opened != 2 {
		t.Fatalf("after the kept stream was dropped: %d streams served, %d opened; want 2", n, opened)
	}

	// A GetBlob without an acknowledgement neither takes nor keeps one.
	ref := a.put(t, randomBytes(t, 100), true)
	if _, err := b.client.Fetch(t.Context(), a.h.ID(), ref, b.store, GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if opened := b.client.Stats().StreamsOpened; opened != 3 {
		t.Fatalf("a fetch without Take: %d streams opened in all, want 3", opened)
	}

	b.client.Close()
	deadline := time.Now().Add(10 * time.Second)
	for streamsBetween(a.h, b.h.ID()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still open on the responder after the fetcher closed", streamsBetween(a.h, b.h.ID()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	fetch() // a closed Client still fetches, on a stream it does not keep
	if opened := b.client.Stats().StreamsOpened; opened != 4 {
		t.Fatalf("after Close: %d streams opened in all, want 4", opened)
	}
	deadline = time.Now().Add(10 * time.Second)
	for streamsBetween(a.h, b.h.ID()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a closed Client kept a stream")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Kept streams are taken newest first, at most maxKeptStreams per peer, and
// closed once kept for keptFor.
func TestStreamPoolBounds(t *testing.T) {
	a := newServing(t, false)
	b := newFetching(t, a.h, false)
	var sts []network.Stream
	for range maxKeptStreams + 1 {
		st, err := b.h.NewStream(t.Context(), a.h.ID(), ID)
		if err != nil {
			t.Fatal(err)
		}
		sts = append(sts, st)
	}
	var pool streamPool
	now := time.Now()
	for i, st := range sts {
		pool.put(a.h.ID(), st, now.Add(time.Duration(i)*time.Second))
	}
	if n := len(pool.kept[a.h.ID()]); n != maxKeptStreams {
		t.Fatalf("%d kept, want %d", n, maxKeptStreams)
	}
	if got := pool.take(a.h.ID(), now.Add(maxKeptStreams*time.Second)); got != sts[maxKeptStreams-1] {
		t.Fatal("did not take the newest")
	}
	// keptFor after the second one was kept, the first two are stale.
	if got := pool.take(a.h.ID(), now.Add(time.Second+keptFor)); got != sts[maxKeptStreams-2] {
		t.Fatal("did not take the newest fresh one")
	}
	if n := len(pool.kept[a.h.ID()]); n != maxKeptStreams-4 {
		t.Fatalf("%d kept after pruning, want %d", n, maxKeptStreams-4)
	}
	pool.close()
	pool.put(a.h.ID(), sts[0], now)
	if pool.take(a.h.ID(), now) != nil {
		t.Fatal("a closed pool kept a stream")
	}
	for _, st := range sts {
		st.Reset()
	}
}

// fakeTimers stands in for time.AfterFunc: it records what was scheduled,
// and the test fires it.
type fakeTimers struct {
	delays  []time.Duration
	fns     []func()
	stopped int
}

func (ft *fakeTimers) afterFunc(d time.Duration, f func()) stopper {
	ft.delays, ft.fns = append(ft.delays, d), append(ft.fns, f)
	return ft
}

func (ft *fakeTimers) Stop() bool { ft.stopped++; return true }

// A peer never called again does not keep its streams: a sweep armed for
// when the oldest kept stream goes stale closes it, whoever it was kept for,
// and the next is armed only while streams are kept. Close disarms it.
func TestStreamPoolSweepsStaleStreams(t *testing.T) {
	a1, a2 := newServing(t, false), newServing(t, false)
	b := newFetching(t, a1.h, false)
	b.h.Peerstore().AddAddrs(a2.h.ID(), a2.h.Addrs(), time.Hour)
	open := func(to peer.ID) network.Stream {
		t.Helper()
		st, err := b.h.NewStream(t.Context(), to, ID)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	start := time.Now()
	clock := start
	var timers fakeTimers
	pool := streamPool{now: func() time.Time { return clock }, afterFunc: timers.afterFunc}

	s1, s2 := open(a1.h.ID()), open(a2.h.ID())
	pool.put(a1.h.ID(), s1, start)
	pool.put(a2.h.ID(), s2, start.Add(3*time.Second))
	if len(timers.fns) != 1 || timers.delays[0] != keptFor {
		t.Fatalf("after 2 puts: sweeps scheduled after %v, want one after %v", timers.delays, keptFor)
	}

	clock = start.Add(keptFor)
	timers.fns[0]()
	if _, err := s1.Write([]byte{0}); err == nil {
		t.Fatal("the stream kept for keptFor is still open")
	}
	if l := pool.kept[a2.h.ID()]; len(l) != 1 || l[0].st != s2 {
		t.Fatal("the fresher stream is no longer kept")
	}
	if len(pool.kept) != 1 || len(timers.fns) != 2 || timers.delays[1] != 3*time.Second {
		t.Fatalf("after the first sweep: %d peers kept, sweeps after %v; want 1, and the next after 3s", len(pool.kept), timers.delays)
	}

	clock = start.Add(3*time.Second + keptFor)
	timers.fns[1]()
	if _, err := s2.Write([]byte{0}); err == nil {
		t.Fatal("the second stream is still open after its sweep")
	}
	if len(pool.kept) != 0 || len(timers.fns) != 2 || pool.sweep != nil {
		t.Fatalf("an empty pool: %d peers kept, %d sweeps scheduled, armed %v; want none armed", len(pool.kept), len(timers.fns), pool.sweep != nil)
	}
	deadline := time.Now().Add(10 * time.Second)
	for streamsBetween(b.h, a1.h.ID())+streamsBetween(b.h, a2.h.ID()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the swept streams are still open")
		}
		time.Sleep(5 * time.Millisecond)
	}

	pool.put(a1.h.ID(), open(a1.h.ID()), clock)
	if len(timers.fns) != 3 {
		t.Fatalf("a put into an empty pool scheduled %d sweeps in all, want 3", len(timers.fns))
	}
	pool.close()
	if timers.stopped != 1 || pool.sweep != nil {
		t.Fatalf("Close stopped %d sweeps (armed %v), want 1", timers.stopped, pool.sweep != nil)
	}
}
