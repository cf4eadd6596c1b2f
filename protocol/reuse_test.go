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
