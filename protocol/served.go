package protocol

import (
	"sync"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Transfers a Server completed, remembered for a while so that an
// AcceptedBlobOwnership is honoured only from a peer that really fetched the
// blob from this one, once per transfer, with the distance it gave then.
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
}

type servedLog struct {
	mu    sync.Mutex
	m     map[servedKey]servedEntry
	swept time.Time // last sweep for expired records, done at most every servedTTL/10
}

// record notes that caller received all of ref.
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

// take consumes the record of a transfer of ref to caller, if one is recent.
func (l *servedLog) take(caller peer.ID, ref datastore.Ref, now time.Time) (map[string]uint32, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := servedKey{caller, ref}
	e, ok := l.m[k]
	delete(l.m, k)
	if !ok || now.Sub(e.at) > servedTTL {
		return nil, false
	}
	return e.distance, true
}
