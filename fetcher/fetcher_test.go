package fetcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/blobsync/blobsync/datastore"
)

// memStore is a Store in memory that records every write.
type memStore struct {
	mu       sync.Mutex
	attempts map[datastore.Ref]uint32
	writes   map[datastore.Ref][]uint32
}

func newMemStore() *memStore {
	return &memStore{attempts: map[datastore.Ref]uint32{}, writes: map[datastore.Ref][]uint32{}}
}

func (m *memStore) FetchAttempts(_ context.Context, ref datastore.Ref) (uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.attempts[ref], nil
}

func (m *memStore) SetFetchAttempts(_ context.Context, ref datastore.Ref, n uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.attempts[ref] = n
	m.writes[ref] = append(m.writes[ref], n)
	return nil
}

// fakeFetch fails each blob's first failures[ref] calls, takes delay per call
// and records calls, their times and the most ever running at once.
type fakeFetch struct {
	delay    time.Duration
	mu       sync.Mutex
	failures map[datastore.Ref]int
	calls    map[datastore.Ref][]time.Time
	ended    map[datastore.Ref][]time.Time
	running  int
	most     int
	done     int
	onDone   func(datastore.Ref) // called on success: the blob is held now
}

var errInjected = errors.New("injected failure")

func newFakeFetch(delay time.Duration) *fakeFetch {
	return &fakeFetch{delay: delay, failures: map[datastore.Ref]int{}, calls: map[datastore.Ref][]time.Time{}, ended: map[datastore.Ref][]time.Time{}}
}

func (ff *fakeFetch) fetch(ctx context.Context, ref datastore.Ref) error {
	ff.mu.Lock()
	ff.calls[ref] = append(ff.calls[ref], time.Now())
	ff.running++
	ff.most = max(ff.most, ff.running)
	ff.mu.Unlock()

	select {
	case <-time.After(ff.delay):
	case <-ctx.Done():
	}

	ff.mu.Lock()
	defer ff.mu.Unlock()
	ff.running--
	ff.ended[ref] = append(ff.ended[ref], time.Now())
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if ff.failures[ref] > 0 {
		ff.failures[ref]--
		return errInjected
	}
	ff.done++
	if ff.onDone != nil {
		ff.onDone(ref)
	}
	return nil
}

func (ff *fakeFetch) callCount(ref datastore.Ref) int {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	return len(ff.calls[ref])
}

func refN(i int) datastore.Ref { return datastore.RefOf(fmt.Appendf(nil, "blob %d", i)) }

func newFetcher(t *testing.T, ff *fakeFetch, store Store, opts ...Option) *Fetcher {
	t.Helper()
	f, err := New(ff.fetch, store, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // also when a test fails early; Close twice is harmless
	return f
}

// TestHundredBlobsConcurrencyTenOneFailureEach is the seed's TestBlobFetchSimple
// on virtual time: every blob fails once, then succeeds.
func TestHundredBlobsConcurrencyTenOneFailureEach(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFetch(500 * time.Millisecond)
		store := newMemStore()
		f := newFetcher(t, ff, store, Concurrency(10))
		for i := range 100 {
			ff.failures[refN(i)] = 1
			for range 3 { // duplicates are ignored
				if err := f.Start(t.Context(), refN(i)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for {
			ff.mu.Lock()
			done := ff.done
			ff.mu.Unlock()
			if done == 100 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		synctest.Wait()
		f.Close()

		if ff.most != 10 {
			t.Errorf("at most %d fetches ran at once, want exactly the limit 10", ff.most)
		}
		for i := range 100 {
			r := refN(i)
			calls := ff.calls[r]
			if len(calls) != 2 {
				t.Fatalf("blob %d fetched %d times, want 2", i, len(calls))
			}
			// The retry waits (500ms + rand[0,500ms)) << 1 after the failure,
			// more if all ten slots were busy then.
			if wait := calls[1].Sub(ff.ended[r][0]); wait < time.Second || wait >= 2*time.Second+ff.delay*10 {
				t.Errorf("blob %d retried %v after failing", i, wait)
			}
			// The failure's count is kept; the success's is not (the blob is held).
			if w := store.writes[r]; len(w) != 1 || w[0] != 1 {
				t.Errorf("blob %d: attempts written %v, want [1]", i, w)
			}
		}
		if pending, inFlight, _ := f.Snapshot(10); pending != 0 || inFlight != 0 {
			t.Errorf("after all succeeded: %d pending, %d in flight", pending, inFlight)
		}
	})
}

func TestRetryDelaysFollowTheFormula(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFetch(0)
		r := refN(1)
		ff.failures[r] = 6
		f := newFetcher(t, ff, newMemStore())
		f.Start(t.Context(), r)
		for ff.callCount(r) < 7 {
			time.Sleep(time.Second)
		}
		f.Close()
		calls := ff.calls[r]
		for k := 1; k < len(calls); k++ { // the k-th retry follows k failed attempts
			wait := calls[k].Sub(ff.ended[r][k-1])
			lo, hi := 500*time.Millisecond<<k, time.Second<<k
			if wait < lo || wait >= hi {
				t.Errorf("retry %d after %v, want in [%v, %v)", k, wait, lo, hi)
			}
		}
	})
}

func TestBackoffIsCapped(t *testing.T) {
	f, err := New(func(context.Context, datastore.Ref) error { return nil }, newMemStore(), WithRand(func(int64) int64 { return 250 * int64(time.Millisecond) }))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for attempts, want := range map[uint32]time.Duration{
		0: 750 * time.Millisecond, 1: 1500 * time.Millisecond, 3: 6 * time.Second,
		20: 750 * time.Millisecond << 20, 21: 750 * time.Millisecond << 20, 1000: 750 * time.Millisecond << 20,
	} {
		if got := f.Backoff(attempts); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", attempts, got, want)
		}
	}
}

// TestAttemptsSurviveRestart: a new Fetcher over the same store continues the backoff.
func TestAttemptsSurviveRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFetch(0)
		r := refN(1)
		ff.failures[r] = 100
		store := newMemStore()
		f := newFetcher(t, ff, store)
		f.Start(t.Context(), r)
		for ff.callCount(r) < 3 {
			time.Sleep(100 * time.Millisecond)
		}
		synctest.Wait()
		f.Close()
		if got, _ := store.FetchAttempts(t.Context(), r); got != 3 {
			t.Fatalf("persisted attempts %d, want 3", got)
		}

		ff2 := newFakeFetch(0)
		ff2.failures[r] = 100
		f2 := newFetcher(t, ff2, store)
		start := time.Now()
		f2.Start(t.Context(), r)
		for ff2.callCount(r) < 1 {
			time.Sleep(100 * time.Millisecond)
		}
		f2.Close()
		if wait := ff2.calls[r][0].Sub(start); wait < 4*time.Second || wait >= 8*time.Second+100*time.Millisecond {
			t.Fatalf("after a restart with 3 attempts, the first try came after %v; want the backoff of 3 attempts, [4s, 8s)", wait)
		}
		if got, _ := store.FetchAttempts(t.Context(), r); got != 4 {
			t.Fatalf("persisted attempts %d after the restart's try, want 4", got)
		}
	})
}

func TestStopFetching(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFetch(time.Second)
		queued, inFlight := refN(1), refN(2)
		ff.failures[queued], ff.failures[inFlight] = 100, 100
		f := newFetcher(t, ff, newMemStore())
		f.Start(t.Context(), queued)
		f.Start(t.Context(), inFlight)
		time.Sleep(1500 * time.Millisecond) // both failed once and wait to retry
		synctest.Wait()
		f.Stop(queued)
		f.Expedite(inFlight)
		synctest.Wait() // inFlight is being fetched again
		f.Stop(inFlight)
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := ff.callCount(queued); n != 1 {
			t.Errorf("stopped while queued: %d calls, want 1", n)
		}
		if n := ff.callCount(inFlight); n != 2 {
			t.Errorf("stopped while in flight: %d calls, want 2 (the one in flight finished)", n)
		}
		if pending, _, _ := f.Snapshot(10); pending != 0 {
			t.Errorf("%d pending after stopping both", pending)
		}
		f.Close()
	})
}

func TestExpediteSkipsTheBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFetch(0)
		r := refN(1)
		ff.failures[r] = 3
		f := newFetcher(t, ff, newMemStore())
		f.StartWithAttempts(r, 10) // persisted: next try in 512 s or more
		synctest.Wait()
		if n := ff.callCount(r); n != 0 {
			t.Fatalf("a blob with 10 attempts was tried at once (%d calls)", n)
		}
		if w := f.Waiting(); len(w) != 1 || w[0] != r {
			t.Fatalf("Waiting = %v", w)
		}
		start := time.Now()
		f.Expedite(r)
		synctest.Wait()
		if n := ff.callCount(r); n != 1 || ff.calls[r][0] != start {
			t.Fatalf("after Expedite: %d calls", n)
		}
		_, _, blobs := f.Snapshot(10)
		if len(blobs) != 1 || blobs[0].Attempts != 11 || blobs[0].LastError != errInjected.Error() || !blobs[0].NextAttempt.After(start) {
			t.Fatalf("snapshot after a failed expedited try: %+v", blobs)
		}
		f.Close()
	})
}

// A location that appears while an attempt is in flight may be the one the
// attempt missed: if that attempt fails, the next starts at once instead of
// after the backoff its failures earned. Without an Expedite the failure
// waits its backoff as ever.
func TestExpediteInFlightRetriesAFailureAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFetch(time.Second)
		expedited, plain := refN(1), refN(2)
		ff.failures[expedited], ff.failures[plain] = 1, 1
		f := newFetcher(t, ff, newMemStore())
		f.StartWithAttempts(expedited, 0)
		f.StartWithAttempts(plain, 0)
		time.Sleep(500 * time.Millisecond) // both attempts in flight
		f.Expedite(expedited)
		time.Sleep(time.Second)
		synctest.Wait()
		if n := ff.callCount(expedited); n != 2 || !ff.calls[expedited][1].Equal(ff.ended[expedited][0]) {
			t.Fatalf("expedited in flight: %d calls %v, ends %v; want the retry the moment the first failed", n, ff.calls[expedited], ff.ended[expedited])
		}
		if n := ff.callCount(plain); n != 1 {
			t.Fatalf("a failure that was not expedited was retried before its backoff: %d calls", n)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := ff.callCount(plain); n != 2 {
			t.Fatalf("after its backoff: %d calls, want 2", n)
		}
		if n := ff.callCount(expedited); n != 2 {
			t.Fatalf("the expedited blob, held after its retry, was tried %d times, want 2", n)
		}
		f.Close()
	})
}

func TestCloseCancelsFetchesAndKeepsCounts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFetch(time.Hour)
		store := newMemStore()
		f := newFetcher(t, ff, store)
		f.Start(t.Context(), refN(1))
		synctest.Wait()
		f.Close() // returns only when the fetch goroutine has
		if got, _ := store.FetchAttempts(t.Context(), refN(1)); got != 1 {
			t.Fatalf("attempts after a cancelled fetch: %d, want 1", got)
		}
		f.StartWithAttempts(refN(2), 0) // after Close: ignored
		if pending, _, _ := f.Snapshot(10); pending != 0 {
			t.Fatalf("%d pending after Close", pending)
		}
	})
}

func TestNewRejectsBadOptions(t *testing.T) {
	ok := func(context.Context, datastore.Ref) error { return nil }
	for name, args := range map[string]struct {
		fetch FetchFunc
		store Store
		opts  []Option
	}{
		"nil fetch":   {nil, newMemStore(), nil},
		"nil store":   {ok, nil, nil},
		"concurrency": {ok, newMemStore(), []Option{Concurrency(0)}},
		"nil clock":   {ok, newMemStore(), []Option{WithClock(nil)}},
	} {
		if f, err := New(args.fetch, args.store, args.opts...); err == nil {
			f.Close()
			t.Errorf("%s: accepted", name)
		}
	}
}

// A fetch that returned nil and then failed (Failed) is counted, persisted
// and retried after the backoff of its attempts, whether it had left the
// Fetcher or was still in flight.
func TestFailedAfterSuccessIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFetch(time.Second)
		store := newMemStore()
		f := newFetcher(t, ff, store)
		gone, inFlight := refN(1), refN(2)
		f.StartWithAttempts(gone, 0)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if pending, _, _ := f.Snapshot(0); pending != 0 || ff.callCount(gone) != 1 {
			t.Fatalf("after a success: %d pending, %d calls", pending, ff.callCount(gone))
		}
		failedAt := time.Now()
		f.Failed(t.Context(), gone, errInjected)

		f.StartWithAttempts(inFlight, 0)
		time.Sleep(500 * time.Millisecond)
		f.Failed(t.Context(), inFlight, errInjected) // its attempt then returns nil
		time.Sleep(time.Second)
		synctest.Wait()
		if pending, _, blobs := f.Snapshot(2); pending != 2 || blobs[0].Attempts != 1 || blobs[0].LastError != errInjected.Error() {
			t.Fatalf("after Failed: %d pending %+v, want both queued with 1 attempt and the error", pending, blobs)
		}

		time.Sleep(time.Hour)
		synctest.Wait()
		for _, r := range []datastore.Ref{gone, inFlight} {
			if n := ff.callCount(r); n != 2 {
				t.Fatalf("blob %s: %d calls, want 2", r, n)
			}
			if w := store.writes[r]; len(w) != 1 || w[0] != 1 {
				t.Fatalf("blob %s: attempts written %v, want [1]", r, w)
			}
		}
		if wait := ff.calls[gone][1].Sub(failedAt); wait < time.Second || wait >= 2*time.Second {
			t.Fatalf("retried %v after Failed, want the backoff of 1 attempt, in [1s, 2s)", wait)
		}
		if wait := ff.calls[inFlight][1].Sub(ff.ended[inFlight][0]); wait < time.Second || wait >= 2*time.Second {
			t.Fatalf("in flight: retried %v after its attempt, want in [1s, 2s)", wait)
		}
		if pending, _, _ := f.Snapshot(0); pending != 0 {
			t.Fatalf("%d pending once both were fetched again", pending)
		}
		f.Close()
	})
}
