package protocol

import (
	"sync"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Transfers a Server completed, remembered for a while so that an
// AcceptedBlobOwnership is honoured only from a peer that really fetched the
// blob from this one, with the distance it gave then. Shares are granted once
// per transfer; the answer is kept, so an acknowledgement repeated for the
// same transfer (the recipient crashed before it recorded the grant, or lost
// the reply) gets the same grant again rather than nothing: the shares the
// first answer moved are not lost with the recipient's crash.
const (
	servedTTL = 10 * time.Minute
	servedCap = 100_000
)

type servedKey struct {
	caller peer.ID
	ref    datastore.Ref
}

type servedEntry struct {
	distance map[string]uint32
	at       time.Time
	state    ackState
	answer   ackAnswer // once state is ackGranted
}

type ackState uint8

const (
	ackOpen    ackState = iota // transfer completed, not yet acknowledged
	ackPending                 // an acknowledgement is being granted
	ackGranted                 // granted: answer repeats for this transfer
)

// ackAnswer is what an acknowledgement of a transfer was granted.
type ackAnswer struct {
	granted map[string]int32
	keeping bool
}

type servedLog struct {
	mu    sync.Mutex
	m     map[servedKey]servedEntry
	swept time.Time // last sweep for expired records, done at most every servedTTL/10
}

// record notes that caller received all of ref: a new transfer, open to one
// grant.
func (l *servedLog) record(caller peer.ID, ref datastore.Ref, distance map[string]uint32, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[servedKey]servedEntry{}
	}
	if len(l.m) >= servedCap {
		// Drop the expired, sweeping at most every servedTTL/10 so that a full
		// log of fresh records costs no scan per transfer; if none expired,
		// the cap drops this record.
		if now.Sub(l.swept) >= servedTTL/10 {
			l.swept = now
			for k, e := range l.m {
				if now.Sub(e.at) > servedTTL {
					delete(l.m, k)
				}
			}
		}
		if len(l.m) >= servedCap {
			return
		}
	}
	l.m[servedKey{caller, ref}] = servedEntry{distance: distance, at: now}
}

// ackBegin looks up a recent transfer of ref to caller, returning it as it
// was: ok is false if there is none. If its state was ackOpen it is now
// ackPending, and the caller must end the grant with ackEnd; ackGranted
// carries the answer to repeat; ackPending means another grant is under way.
func (l *servedLog) ackBegin(caller peer.ID, ref datastore.Ref, now time.Time) (servedEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := servedKey{caller, ref}
	e, ok := l.m[k]
	if !ok || now.Sub(e.at) > servedTTL {
		delete(l.m, k)
		return servedEntry{}, false
	}
	if e.state == ackOpen {
		pending := e
		pending.state = ackPending
		l.m[k] = pending
	}
	return e, true
}

// ackEnd ends a grant begun by ackBegin: with its answer, kept for repeats,
// or, when ok is false, nothing granted, reopening the transfer.
func (l *servedLog) ackEnd(caller peer.ID, ref datastore.Ref, answer ackAnswer, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := servedKey{caller, ref}
	e, found := l.m[k]
	if !found || e.state != ackPending {
		return // expired and swept, or replaced by a new transfer meanwhile
	}
	if ok {
		e.state, e.answer = ackGranted, answer
	} else {
		e.state = ackOpen
	}
	l.m[k] = e
}
