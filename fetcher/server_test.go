package fetcher

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/blobsync/blobsync/datastore"
)

// fakeSource is a Source in memory: the blobs wanted, their attempts and
// locations; scans take scanTime and are recorded.
type fakeSource struct {
	mu        sync.Mutex
	wanted    map[datastore.Ref]bool
	attempts  map[datastore.Ref]uint32
	locations map[datastore.Ref][]string
	scanTime  time.Duration
	scans     []time.Time
}

func newFakeSource() *fakeSource {
	return &fakeSource{wanted: map[datastore.Ref]bool{}, attempts: map[datastore.Ref]uint32{}, locations: map[datastore.Ref][]string{}}
}

func (s *fakeSource) ScanWanted(_ context.Context, fn func(datastore.Ref, uint32)) error {
	s.mu.Lock()
	s.scans = append(s.scans, time.Now())
	var refs []datastore.Ref
	for r, w := range s.wanted {
		if w {
			refs = append(refs, r)
		}
	}
	s.mu.Unlock()
	time.Sleep(s.scanTime)
	for _, r := range refs {
		fn(r, s.attempts[r])
	}
	return nil
}

func (s *fakeSource) Wanted(_ context.Context, ref datastore.Ref) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wanted[ref], nil
}

func (s *fakeSource) ListsPeer(_ context.Context, ref datastore.Ref, p string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.locations[ref], p), nil
}

// held marks ref fetched: a held blob is not wanted.
func (s *fakeSource) held(ref datastore.Ref) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wanted[ref] = false
}

func (s *fakeSource) want(ref datastore.Ref, attempts uint32, locations ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wanted[ref], s.attempts[ref], s.locations[ref] = true, attempts, locations
}

func newServer(t *testing.T, f *Fetcher, src Source, opts ...ServerOption) *Server {
	t.Helper()
	s, err := NewServer(f, src, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestServerScansAtStartAndOnSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		src.scanTime = 2 * time.Second
		src.want(refN(1), 0)
		src.want(refN(2), 0)
		ff := newFakeFetch(0)
		ff.onDone = src.held
		f := newFetcher(t, ff, newMemStore())
		start := time.Now()
		s := newServer(t, f, src, ScanDelay(300*time.Second, 4))
		synctest.Wait()
		if src.scans[0] != start {
			t.Fatalf("first scan at +%v, want at once", src.scans[0].Sub(start))
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if ff.callCount(refN(1)) != 1 || ff.callCount(refN(2)) != 1 {
			t.Fatal("blobs found by the first scan were not fetched")
		}
		if st := s.LastScan(); st.Started != 2 || st.Took != 2*time.Second {
			t.Fatalf("last scan: %+v", st)
		}
		src.want(refN(3), 0) // no event: only the periodic scan finds it
		time.Sleep(time.Hour)
		synctest.Wait()
		// Scans start 2 s + 300 s + 4×2 s apart.
		for i := 1; i < len(src.scans); i++ {
			if gap := src.scans[i].Sub(src.scans[i-1]); gap != 310*time.Second {
				t.Fatalf("scan %d came %v after the one before, want 310s", i, gap)
			}
		}
		if len(src.scans) != 12 {
			t.Fatalf("%d scans in an hour, want 12", len(src.scans))
		}
		if ff.callCount(refN(3)) != 1 {
			t.Fatal("the periodic scan did not start a blob it found")
		}
		s.Close()
		f.Close()
	})
}

func TestServerActsAtOnceOnChangedSignposts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		ff := newFakeFetch(0)
		ff.onDone = src.held
		f := newFetcher(t, ff, newMemStore())
		s := newServer(t, f, src)
		synctest.Wait()

		src.want(refN(1), 0)
		at := time.Now()
		s.SignpostsChanged([]datastore.Ref{refN(1), refN(2)}) // refN(2) is not wanted
		synctest.Wait()
		if n := ff.callCount(refN(1)); n != 1 || ff.calls[refN(1)][0] != at {
			t.Fatalf("wanted blob: %d calls", n)
		}
		if n := ff.callCount(refN(2)); n != 0 {
			t.Fatalf("unwanted blob fetched %d times", n)
		}

		// A blob waiting out a backoff is tried at once when its signpost changes.
		ff.failures[refN(3)] = 1
		src.want(refN(3), 0)
		s.SignpostsChanged([]datastore.Ref{refN(3)})
		synctest.Wait()
		s.SignpostsChanged([]datastore.Ref{refN(3)}) // a new location, say
		synctest.Wait()
		if n := ff.callCount(refN(3)); n != 2 {
			t.Fatalf("changed while waiting: %d calls, want 2 (no backoff wait)", n)
		}
		s.Close()
		f.Close()
	})
}

func TestServerTriesBlobsOfAPeerThatConnects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		src.want(refN(1), 5, "device")     // waiting 16 s or more
		src.want(refN(2), 5, "other-peer") // waiting too, elsewhere
		src.want(refN(3), 0, "device")     // never tried: tried at once anyway
		ff := newFakeFetch(0)
		ff.onDone = src.held
		for i := 1; i <= 3; i++ {
			ff.failures[refN(i)] = 1
		}
		f := newFetcher(t, ff, newMemStore())
		s := newServer(t, f, src)
		synctest.Wait()
		if ff.callCount(refN(1)) != 0 || ff.callCount(refN(3)) != 1 {
			t.Fatalf("before connecting: %d and %d calls", ff.callCount(refN(1)), ff.callCount(refN(3)))
		}
		s.PeerConnected("device")
		synctest.Wait()
		if n := ff.callCount(refN(1)); n != 1 {
			t.Fatalf("a waiting blob listing the peer: %d calls, want 1 at once", n)
		}
		if n := ff.callCount(refN(3)); n != 2 {
			t.Fatalf("a blob that failed once, listing the peer: %d calls, want 2", n)
		}
		if n := ff.callCount(refN(2)); n != 0 {
			t.Fatalf("a waiting blob not listing the peer was tried %d times", n)
		}
		s.Close()
		f.Close()
	})
}
