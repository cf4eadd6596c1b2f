// Package fetcher schedules background blob fetches: a heap of blobs ordered
// by next attempt, a bounded number of fetches at once, exponential backoff
// with the attempt count persisted across restarts, and the server loop that
// decides which blobs a syncgroup server fetches and when. It knows nothing of
// libp2p: it calls a fetch function and a small store.
package fetcher

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/blobsync/blobsync/datastore"
)

// FetchFunc fetches one blob; a nil error means the blob is held now, or
// verified and being installed (should that fail, the caller reports it with
// Fetcher.Failed), and ErrUnwanted that it is no longer to be fetched (nor
// counted as an attempt).
type FetchFunc func(ctx context.Context, ref datastore.Ref) error

// ErrUnwanted is what a FetchFunc returns for a blob this peer no longer
// wants (it left the syncgroup, or is no longer a server of it): the Fetcher
// forgets the blob, as if stopped.
var ErrUnwanted = errors.New("blob no longer wanted")

// Store keeps each blob's fetch attempts (in its signpost), so that backoff
// survives restarts.
type Store interface {
	FetchAttempts(ctx context.Context, ref datastore.Ref) (uint32, error)
	SetFetchAttempts(ctx context.Context, ref datastore.Ref, n uint32) error
}

// Defaults (the seed's values).
const (
	DefaultConcurrency = 4
	// MaxBackoffShift caps the exponent of the backoff: about 6 to 12 days.
	MaxBackoffShift = 20
	backoffBase     = 500 * time.Millisecond
)

type config struct {
	concurrency int
	clock       Clock
	rand        func(n int64) int64 // uniform in [0, n)
	log         *slog.Logger
	observe     func(ref datastore.Ref, took time.Duration, err error)
}

// Option configures a Fetcher.
type Option func(*config)

// Concurrency sets how many fetches may run at once (default DefaultConcurrency).
func Concurrency(n int) Option { return func(c *config) { c.concurrency = n } }

// WithClock sets the clock (default RealClock).
func WithClock(cl Clock) Option { return func(c *config) { c.clock = cl } }

// WithRand sets the source of the backoff's random part: a function returning
// a uniform value in [0, n) (default math/rand/v2.Int64N).
func WithRand(r func(n int64) int64) Option { return func(c *config) { c.rand = r } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithObserver has fn told of every attempt: its blob, how long it took and
// its error (nil on success). For metrics; fn must be quick.
func WithObserver(fn func(ref datastore.Ref, took time.Duration, err error)) Option {
	return func(c *config) { c.observe = fn }
}

// Fetcher fetches the blobs it is given in the background, retrying failures
// with backoff, until each is held or stopped.
type Fetcher struct {
	fetch FetchFunc
	store Store
	cfg   config

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{} // nudges the scheduler; capacity 1

	mu       sync.Mutex
	states   map[datastore.Ref]*state
	queue    stateHeap
	inFlight int
}

// New starts a Fetcher that fetches with fetch and keeps attempts in store.
func New(fetch FetchFunc, store Store, opts ...Option) (*Fetcher, error) {
	cfg := config{concurrency: DefaultConcurrency, clock: RealClock{}, rand: rand.Int64N, log: slog.Default()}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.concurrency <= 0 || cfg.clock == nil || cfg.rand == nil || cfg.log == nil || fetch == nil || store == nil {
		return nil, errors.New("fetcher: needs a fetch function, a store, a clock, a rand, a logger and a positive concurrency")
	}
	f := &Fetcher{fetch: fetch, store: store, cfg: cfg, wake: make(chan struct{}, 1), states: map[datastore.Ref]*state{}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.wg.Go(f.run)
	return f, nil
}

// Close stops scheduling, cancels the fetches in flight and waits for the
// scheduler and every fetch goroutine to return.
func (f *Fetcher) Close() error {
	f.cancel()
	f.wg.Wait()
	return nil
}

// Backoff returns how long to wait after attempts failed attempts:
// (500ms + rand[0,500ms)) << min(attempts, MaxBackoffShift).
func (f *Fetcher) Backoff(attempts uint32) time.Duration {
	return (backoffBase + time.Duration(f.cfg.rand(int64(backoffBase)))) << min(attempts, MaxBackoffShift)
}

// firstAttempt is when a blob with attempts persisted is first tried: now if
// it was never tried, else after the backoff its attempts earned.
func (f *Fetcher) firstAttempt(attempts uint32) time.Time {
	now := f.cfg.clock.Now()
	if attempts == 0 {
		return now
	}
	return now.Add(f.Backoff(attempts))
}

// Start adds ref, reading its persisted attempts from the store. A ref already
// known is left as it is (but no longer stopped, if it was).
func (f *Fetcher) Start(ctx context.Context, ref datastore.Ref) error {
	if f.known(ref) {
		return nil
	}
	attempts, err := f.store.FetchAttempts(ctx, ref)
	if err != nil {
		return fmt.Errorf("fetcher: %s: %w", ref, err)
	}
	f.StartWithAttempts(ref, attempts)
	return nil
}

func (f *Fetcher) known(ref datastore.Ref) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.states[ref]
	if ok {
		s.stopped = false
	}
	return ok
}

// StartWithAttempts adds ref, known to have attempts persisted: for callers
// that have just read its signpost. A ref already known is left as it is.
func (f *Fetcher) StartWithAttempts(ref datastore.Ref, attempts uint32) {
	next := f.firstAttempt(attempts).UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return
	}
	if s, ok := f.states[ref]; ok {
		s.stopped = false
		return
	}
	s := &state{ref: ref, attempts: attempts, next: next}
	f.states[ref] = s
	heap.Push(&f.queue, s)
	if s.index == 0 {
		f.nudge()
	}
}

// Failed reports that an attempt at ref whose fetch returned nil failed
// after all (the blob was verified, then could not be installed): the
// attempt is counted and persisted, and ref is queued again after its
// backoff. If ref is in flight, that attempt counts as failed with err,
// whatever it returns; if it is queued, it stays as it is.
func (f *Fetcher) Failed(ctx context.Context, ref datastore.Ref, err error) {
	attempts, serr := f.store.FetchAttempts(ctx, ref)
	if serr == nil {
		attempts++
		serr = f.store.SetFetchAttempts(ctx, ref, attempts)
	}
	if serr != nil {
		f.cfg.log.Warn("fetcher: recording attempts", "ref", ref, "err", serr)
	}
	next := f.cfg.clock.Now().Add(f.Backoff(attempts)).UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return
	}
	s, ok := f.states[ref]
	switch {
	case !ok:
		s = &state{ref: ref, attempts: attempts, next: next, lastErr: err}
		f.states[ref] = s
		heap.Push(&f.queue, s)
		f.nudge()
	case s.index < 0:
		s.failed, s.lastErr = true, err
	}
}

// Stop forgets ref: no more attempts. A fetch in flight may finish.
func (f *Fetcher) Stop(ref datastore.Ref) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.states[ref]
	if !ok {
		return
	}
	s.stopped = true
	if s.index >= 0 {
		heap.Remove(&f.queue, int(s.index))
		delete(f.states, ref)
	} // else its fetching goroutine forgets it when it returns
}

// Expedite moves the next attempt of each queued ref to now: a location that
// may have it has just appeared. A ref in flight is retried at once if its
// attempt fails, without waiting out a backoff: the attempt may have started
// before the new location was known. Unknown refs are left alone.
func (f *Fetcher) Expedite(refs ...datastore.Ref) {
	now := f.cfg.clock.Now().UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	moved := false
	for _, ref := range refs {
		s, ok := f.states[ref]
		switch {
		case !ok:
		case s.index < 0:
			s.expedite = true
		case s.next > now:
			s.next = now
			heap.Fix(&f.queue, int(s.index))
			moved = true
		}
	}
	if moved {
		f.nudge()
	}
}

// nudge wakes the scheduler. Callers hold f.mu or not; it never blocks.
func (f *Fetcher) nudge() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// run starts fetches whose time has come, up to the concurrency limit, and
// sleeps until the next one is due or something changes.
func (f *Fetcher) run() {
	for {
		f.mu.Lock()
		now := f.cfg.clock.Now().UnixNano()
		for s := f.popDue(now); s != nil; s = f.popDue(now) {
			f.wg.Go(func() { f.work(s) })
		}
		wait := time.Duration(-1)
		if f.inFlight < f.cfg.concurrency && len(f.queue) > 0 {
			wait = time.Duration(f.queue[0].next - now)
		}
		f.mu.Unlock()

		var timer Timer
		var due <-chan time.Time
		if wait >= 0 {
			timer = f.cfg.clock.NewTimer(wait)
			due = timer.C()
		}
		select {
		case <-f.ctx.Done():
		case <-f.wake:
		case <-due:
		}
		if timer != nil {
			timer.Stop()
		}
		if f.ctx.Err() != nil {
			return
		}
	}
}

// work attempts s, then every blob due when it ends, while the number in
// flight allows: a goroutine per run of attempts rather than per attempt,
// and no trip through the scheduler between them (many small blobs).
func (f *Fetcher) work(s *state) {
	for s != nil {
		f.attempt(s)
		s = f.takeDue()
	}
}

// takeDue takes the next blob due, counting it in flight, if one is and the
// number in flight allows; else it wakes the scheduler and returns nil.
func (f *Fetcher) takeDue() *state {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() == nil {
		if s := f.popDue(f.cfg.clock.Now().UnixNano()); s != nil {
			return s
		}
	}
	f.nudge()
	return nil
}

// popDue pops the next blob due by now and counts it in flight, if one is
// and the number in flight allows; else it returns nil. The caller holds mu.
func (f *Fetcher) popDue(now int64) *state {
	if f.inFlight >= f.cfg.concurrency || len(f.queue) == 0 || f.queue[0].next > now {
		return nil
	}
	s := heap.Pop(&f.queue).(*state)
	s.expedite = false
	f.inFlight++
	return s
}

// attempt makes one attempt, persists the attempt count, and requeues the
// blob with backoff if it failed and is still wanted.
func (f *Fetcher) attempt(s *state) {
	start := f.cfg.clock.Now()
	err := f.fetch(f.ctx, s.ref)
	if f.cfg.observe != nil && !errors.Is(err, ErrUnwanted) {
		f.cfg.observe(s.ref, f.cfg.clock.Now().Sub(start), err)
	}
	if errors.Is(err, ErrUnwanted) {
		f.mu.Lock()
		defer f.mu.Unlock()
		s.stopped = true
		f.inFlight--
		delete(f.states, s.ref)
		return
	}
	attempts := s.attempts + 1 // only this goroutine touches attempts while in flight
	// Persist a failure's count before requeueing, so counts reach the store
	// in order; a shutdown must not lose it, so the write outlives f.ctx. A
	// success's is not kept: the blob is held and never fetched again, and a
	// durable write per blob would slow fetching many small blobs.
	if err != nil {
		if serr := f.store.SetFetchAttempts(context.WithoutCancel(f.ctx), s.ref, attempts); serr != nil {
			f.cfg.log.Warn("fetcher: recording attempts", "ref", s.ref, "err", serr)
		}
	}
	next := f.cfg.clock.Now().Add(f.Backoff(attempts)).UnixNano()

	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && s.failed { // counted and persisted by Failed
		err = s.lastErr
	}
	s.attempts, s.lastErr, s.failed = attempts, err, false
	f.inFlight--
	if err == nil || s.stopped || f.ctx.Err() != nil {
		delete(f.states, s.ref)
	} else {
		s.next = next
		if s.expedite { // a location appeared during the attempt
			s.next = min(next, f.cfg.clock.Now().UnixNano())
		}
		heap.Push(&f.queue, s)
		f.cfg.log.Debug("fetch failed; will retry", "ref", s.ref, "attempts", attempts, "in", time.Duration(next-f.cfg.clock.Now().UnixNano()).Round(time.Millisecond), "err", err)
	}
}

// BlobState is one blob in the Fetcher, for status displays.
type BlobState struct {
	Ref         datastore.Ref
	Attempts    uint32
	NextAttempt time.Time // zero while in flight
	InFlight    bool
	LastError   string
}

// Snapshot returns the counts of blobs pending (queued or in flight) and in
// flight, and up to limit blobs: those in flight, then the queued ones soonest first.
func (f *Fetcher) Snapshot(limit int) (pending, inFlight int, blobs []BlobState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pending, inFlight = len(f.states), f.inFlight
	for _, s := range f.states {
		if s.index < 0 && len(blobs) < limit {
			blobs = append(blobs, describe(s))
		}
	}
	for _, s := range f.queue.earliest(limit - len(blobs)) {
		blobs = append(blobs, describe(s))
	}
	return pending, inFlight, blobs
}

func describe(s *state) BlobState {
	b := BlobState{Ref: s.ref, Attempts: s.attempts, InFlight: s.index < 0}
	if !b.InFlight {
		b.NextAttempt = time.Unix(0, s.next)
	}
	if s.lastErr != nil {
		b.LastError = s.lastErr.Error()
	}
	return b
}

// Waiting returns the refs queued but not in flight whose attempts are above
// zero: the blobs waiting out a backoff.
func (f *Fetcher) Waiting() []datastore.Ref {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []datastore.Ref
	for _, s := range f.queue {
		if s.attempts > 0 {
			out = append(out, s.ref)
		}
	}
	return out
}
