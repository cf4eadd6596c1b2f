package protocol

import (
	"fmt"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The log of served transfers is capped: a full log of fresh records refuses
// new ones; once records expire, a sweep (at most every servedTTL/10) frees
// room. Each record is taken once.
func TestServedLogCapAndExpiry(t *testing.T) {
	var l servedLog
	now := time.Unix(1_000_000, 0)
	caller := peer.ID("caller")
	ref := func(i int) datastore.Ref { return datastore.RefOf(fmt.Appendf(nil, "served %d", i)) }
	for i := range servedCap {
		l.record(caller, ref(i), nil, now)
	}
	l.record(caller, ref(-1), nil, now.Add(time.Second))
	if _, ok := l.take(caller, ref(-1), now.Add(time.Second)); ok {
		t.Fatal("a full log of fresh records took one more")
	}
	if _, ok := l.take(caller, ref(0), now.Add(time.Second)); !ok {
		t.Fatal("a recorded transfer could not be taken")
	}
	if _, ok := l.take(caller, ref(0), now.Add(time.Second)); ok {
		t.Fatal("a transfer was taken twice")
	}
	later := now.Add(servedTTL + time.Second)
	l.record(caller, ref(0), nil, later)  // room again after the take
	l.record(caller, ref(-2), nil, later) // full: sweeps the expired
	if got := len(l.m); got != 2 {
		t.Fatalf("after the sweep the log holds %d records, want the 2 fresh ones", got)
	}
	if _, ok := l.take(caller, ref(-2), later); !ok {
		t.Fatal("a record made after the sweep could not be taken")
	}
}
