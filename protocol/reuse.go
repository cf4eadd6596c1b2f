package protocol

import (
	"context"
	"sync"
	"time"

	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// A GetBlob stream whose AcceptedBlobOwnership was answered is idle on both
// sides: the fetcher keeps it, and its next GetBlob to that peer goes on it
// instead of on a new stream, and the responder waits on it for that
// request. A new stream costs a round of protocol negotiation and a
// goroutine on each side: per 4 KiB blob, more than the blob.
const (
	maxKeptStreams = 8                // per peer
	keptFor        = 10 * time.Second // a stream kept longer is closed, not reused
	// keptStreamWait is how long a responder waits for another request on a
	// kept stream: longer than keptFor, so that it still reads a stream the
	// fetcher takes.
	keptStreamWait = 30 * time.Second
)

type keptStream struct {
	st    network.Stream
	since time.Time
}

// streamPool holds the streams a Client keeps, by peer. While it holds any,
// a sweep is armed for when the oldest goes stale: a peer the Client never
// calls again would otherwise keep its streams, each holding a stream of the
// resource manager's limits on both sides, until the Client closed.
type streamPool struct {
	mu     sync.Mutex
	closed bool
	kept   map[peer.ID][]keptStream
	sweep  stopper // armed while any stream is kept; nil otherwise

	// Tests set these; nil means time.Now and time.AfterFunc.
	now       func() time.Time
	afterFunc func(time.Duration, func()) stopper
}

// stopper is what streamPool needs of a *time.Timer.
type stopper interface{ Stop() bool }

// take returns a stream kept for p, or nil; streams kept too long are closed.
func (sp *streamPool) take(p peer.ID, now time.Time) network.Stream {
	sp.mu.Lock()
	stale := sp.prune(p, now)
	var st network.Stream
	if l := sp.kept[p]; len(l) > 0 {
		st = l[len(l)-1].st
		sp.kept[p] = l[:len(l)-1]
	}
	sp.mu.Unlock()
	closeAll(stale)
	return st
}

// put keeps st for p's next request, unless the pool is closed or full
// (then st is closed).
func (sp *streamPool) put(p peer.ID, st network.Stream, now time.Time) {
	sp.mu.Lock()
	stale := sp.prune(p, now)
	if sp.closed || len(sp.kept[p]) >= maxKeptStreams {
		stale = append(stale, st)
	} else {
		if sp.kept == nil {
			sp.kept = map[peer.ID][]keptStream{}
		}
		sp.kept[p] = append(sp.kept[p], keptStream{st: st, since: now})
		sp.arm(now)
	}
	sp.mu.Unlock()
	closeAll(stale)
}

// prune drops p's streams kept too long and returns them; the caller holds mu.
func (sp *streamPool) prune(p peer.ID, now time.Time) []network.Stream {
	l := sp.kept[p]
	i := 0
	for i < len(l) && now.Sub(l[i].since) >= keptFor { // oldest first
		i++
	}
	if i == 0 {
		return nil
	}
	stale := make([]network.Stream, i)
	for k := range i {
		stale[k] = l[k].st
	}
	if i == len(l) {
		delete(sp.kept, p)
	} else {
		sp.kept[p] = l[i:]
	}
	return stale
}

// close closes every kept stream and keeps none from now on.
func (sp *streamPool) close() {
	sp.mu.Lock()
	sp.closed = true
	if sp.sweep != nil {
		sp.sweep.Stop()
		sp.sweep = nil
	}
	var all []network.Stream
	for _, l := range sp.kept {
		for _, k := range l {
			all = append(all, k.st)
		}
	}
	sp.kept = nil
	sp.mu.Unlock()
	closeAll(all)
}

// arm schedules a sweep for when the oldest kept stream goes stale, unless
// one is scheduled or none is kept; the caller holds mu.
func (sp *streamPool) arm(now time.Time) {
	if sp.sweep != nil || sp.closed || len(sp.kept) == 0 {
		return
	}
	oldest := now
	for _, l := range sp.kept {
		oldest = minTime(oldest, l[0].since) // each list is oldest first
	}
	after := sp.afterFunc
	if after == nil {
		after = func(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }
	}
	sp.sweep = after(oldest.Add(keptFor).Sub(now), sp.sweepStale)
}

// sweepStale closes the streams of every peer kept too long and arms the
// next sweep.
func (sp *streamPool) sweepStale() {
	now := time.Now()
	if sp.now != nil {
		now = sp.now()
	}
	sp.mu.Lock()
	sp.sweep = nil
	var stale []network.Stream
	for p := range sp.kept {
		stale = append(stale, sp.prune(p, now)...)
	}
	sp.arm(now)
	sp.mu.Unlock()
	closeAll(stale)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func closeAll(sts []network.Stream) {
	for _, st := range sts {
		st.Close()
	}
}

// callKept sends req, a GetBlob to be acknowledged on its stream, on a
// stream kept for p and reads the answer's header. It returns a nil stream
// if none is kept or the kept one failed (p may have closed it meanwhile):
// the caller then opens a new one, GetBlob being safe to repeat.
func (c *Client) callKept(ctx context.Context, p peer.ID, req *pb.Request) (network.Stream, *pb.Response, error) {
	st := c.pool.take(p, time.Now())
	if st == nil {
		return nil, nil, nil
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	resp, err := exchange(st, req, time.Now().Add(c.cfg.requestTimeout), false)
	if !stop() {
		return nil, nil, context.Cause(ctx)
	}
	if err != nil {
		st.Reset()
		return nil, nil, nil
	}
	return st, resp, nil
}

// keep puts st, whose exchanges are all answered, in the pool for p.
func (c *Client) keep(p peer.ID, st network.Stream) {
	if err := st.SetDeadline(time.Time{}); err != nil {
		st.Reset()
		return
	}
	c.pool.put(p, st, time.Now())
}

// Close closes the streams the Client keeps and keeps none from now on.
func (c *Client) Close() error {
	c.pool.close()
	return nil
}
