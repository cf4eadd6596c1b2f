package protocol

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The log of served transfers is capped: a full log of fresh records refuses
// new ones; once records expire, a sweep (at most every servedTTL/10) frees
// room.
func TestServedLogCapAndExpiry(t *testing.T) {
	var l servedLog
	now := time.Unix(1_000_000, 0)
	caller := peer.ID("caller")
	ref := func(i int) datastore.Ref { return datastore.RefOf(fmt.Appendf(nil, "served %d", i)) }
	for i := range servedCap {
		l.record(caller, ref(i), nil, now)
	}
	l.record(caller, ref(-1), nil, now.Add(time.Second))
	if _, ok := l.ackBegin(caller, ref(-1), now.Add(time.Second)); ok {
		t.Fatal("a full log of fresh records took one more")
	}
	if _, ok := l.ackBegin(caller, ref(0), now.Add(time.Second)); !ok {
		t.Fatal("a recorded transfer could not be acknowledged")
	}
	later := now.Add(servedTTL + time.Second)
	l.record(caller, ref(-2), nil, later) // full: sweeps the expired
	if got := len(l.m); got != 1 {
		t.Fatalf("after the sweep the log holds %d records, want the 1 fresh one", got)
	}
	if _, ok := l.ackBegin(caller, ref(-2), later); !ok {
		t.Fatal("a record made after the sweep could not be acknowledged")
	}
}

// A transfer is granted once: while a grant is under way another is told so;
// a failed grant reopens the transfer; a granted one repeats its answer; a
// new transfer of the same blob opens a new grant.
func TestServedLogGrantsOncePerTransfer(t *testing.T) {
	var l servedLog
	now := time.Unix(1_000_000, 0)
	caller, ref := peer.ID("caller"), datastore.RefOf([]byte("x"))
	dist := map[string]uint32{ownSG: 1}
	l.record(caller, ref, dist, now)

	e, ok := l.ackBegin(caller, ref, now)
	if !ok || e.state != ackOpen || !maps.Equal(e.distance, dist) {
		t.Fatalf("first ackBegin = %+v, %v; want the open transfer with its distance", e, ok)
	}
	if e, _ := l.ackBegin(caller, ref, now); e.state != ackPending {
		t.Fatalf("ackBegin during a grant: state %d, want pending", e.state)
	}
	l.ackEnd(caller, ref, ackAnswer{}, false)
	if e, _ := l.ackBegin(caller, ref, now); e.state != ackOpen {
		t.Fatalf("after a failed grant: state %d, want open again", e.state)
	}
	answer := ackAnswer{granted: map[string]int32{ownSG: 2}, keeping: true}
	l.ackEnd(caller, ref, answer, true)
	for range 2 {
		e, ok := l.ackBegin(caller, ref, now.Add(time.Minute))
		if !ok || e.state != ackGranted || !maps.Equal(e.answer.granted, answer.granted) || !e.answer.keeping {
			t.Fatalf("after the grant: %+v, %v; want the answer repeated", e, ok)
		}
	}
	l.record(caller, ref, nil, now.Add(2*time.Minute))
	if e, _ := l.ackBegin(caller, ref, now.Add(2*time.Minute)); e.state != ackOpen {
		t.Fatalf("a new transfer: state %d, want open", e.state)
	}
	if _, ok := l.ackBegin(caller, ref, now.Add(2*time.Minute+servedTTL+time.Second)); ok {
		t.Fatal("an expired transfer was acknowledged")
	}
}
