package datastore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
)

func (c *recordCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.recs)
}

// getCountingDS counts the reads that reach the datastore.
type getCountingDS struct {
	ds.Batching
	gets atomic.Int64
}

func (d *getCountingDS) Get(ctx context.Context, k ds.Key) ([]byte, error) {
	d.gets.Add(1)
	return d.Batching.Get(ctx, k)
}

func TestRecordCacheServesRepeatedReads(t *testing.T) {
	d := &getCountingDS{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	m := NewMetaStore(d)
	ctx := t.Context()
	ref, other, gone := RefOf([]byte("a")), RefOf([]byte("b")), RefOf([]byte("c"))
	if err := m.SetFetchAttempts(ctx, ref, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := m.UpdateBlobMeta(ctx, ref, func(b *BlobMeta) bool { b.Size = 42; return true }); err != nil {
		t.Fatal(err)
	}
	if err := m.SetFetchAttempts(ctx, gone, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteSignpost(ctx, gone); err != nil {
		t.Fatal(err)
	}
	before := d.gets.Load()
	for range 3 {
		sp, found, err := m.Signpost(ctx, ref)
		if err != nil || !found || sp.FetchAttempts != 3 {
			t.Fatalf("Signpost: %+v, %v, %v", sp, found, err)
		}
		meta, found, err := m.BlobMeta(ctx, ref)
		if err != nil || !found || meta.Size != 42 {
			t.Fatalf("BlobMeta: %+v, %v, %v", meta, found, err)
		}
		if _, found, err := m.Signpost(ctx, gone); err != nil || found {
			t.Fatalf("deleted signpost: found %v, %v", found, err)
		}
	}
	if n := d.gets.Load() - before; n != 0 {
		t.Fatalf("reads of records just written reached the datastore %d times", n)
	}
	for range 3 {
		if _, found, err := m.BlobMeta(ctx, other); err != nil || found {
			t.Fatalf("BlobMeta of an unknown blob: found %v, %v", found, err)
		}
	}
	if n := d.gets.Load() - before; n != 1 {
		t.Fatalf("3 reads of a missing record reached the datastore %d times, want 1", n)
	}
}

// A write whose commit fails leaves the record to be read from the
// datastore, which still holds the last committed value.
func TestRecordCacheForgetsAFailedWrite(t *testing.T) {
	d := &countingDS{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	m := NewMetaStore(d)
	ctx := t.Context()
	ref := RefOf([]byte("a"))
	if err := m.SetFetchAttempts(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	d.fail.Store(true)
	if err := m.SetFetchAttempts(ctx, ref, 2); err == nil {
		t.Fatal("a failed commit reported success")
	}
	if got := m.cache.len(); got != 0 {
		t.Fatalf("%d records cached after a failed write of the only one", got)
	}
	sp, found, err := m.Signpost(ctx, ref)
	if err != nil || !found || sp.FetchAttempts != 1 {
		t.Fatalf("after a failed write: %+v, %v, %v; want the committed 1 attempt", sp, found, err)
	}
}

// A read that missed and fetched a record from the datastore does not cache
// it if the record was written meanwhile: it may be the older value.
func TestRecordCacheFillLosesToAWrite(t *testing.T) {
	c := newRecordCache(16)
	id := recordID{signpostRecord, RefOf([]byte("a"))}
	stripe := func(Ref) int { return 5 }
	_, ok, gen := c.lookup(id, 5)
	if ok {
		t.Fatal("empty cache had the record")
	}
	ops := []writeOp{{value: []byte("new"), rec: id}}
	c.begin(ops, stripe)
	c.fill(id, 5, gen, cachedRecord{b: []byte("old"), found: true}) // read before the commit
	if _, ok, _ := c.lookup(id, 5); ok {
		t.Fatal("a fill raced by a write was cached")
	}
	c.end(ops, stripe, nil)
	c.fill(id, 5, gen, cachedRecord{b: []byte("old"), found: true}) // read before the commit, filled after
	rec, ok, gen := c.lookup(id, 5)
	if !ok || string(rec.b) != "new" {
		t.Fatalf("after the write: %q, %v; want the value written", rec.b, ok)
	}
	// A fill with the current generation is cached; another stripe's write
	// does not stop it.
	other := recordID{blobMetaRecord, RefOf([]byte("b"))}
	c.begin([]writeOp{{rec: recordID{blobMetaRecord, RefOf([]byte("c"))}}}, func(Ref) int { return 6 })
	c.fill(other, 5, gen, cachedRecord{})
	if rec, ok, _ := c.lookup(other, 5); !ok || rec.found {
		t.Fatalf("a fill at the current generation: %+v, %v; want cached as absent", rec, ok)
	}
}

// Readers racing a writer never see a record go back to an older value.
func TestRecordCacheReadsNeverGoBack(t *testing.T) {
	m := NewMetaStore(dssync.MutexWrap(ds.NewMapDatastore()))
	ctx := t.Context()
	ref := RefOf([]byte("a"))
	const writes = 300
	var wg sync.WaitGroup
	var stop atomic.Bool
	for r := range 4 {
		wg.Go(func() {
			var last uint32
			for !stop.Load() {
				sp, _, err := m.Signpost(ctx, ref)
				if err != nil {
					t.Error(err)
					return
				}
				if sp.FetchAttempts < last {
					t.Errorf("reader %d saw %d after %d", r, sp.FetchAttempts, last)
					return
				}
				last = sp.FetchAttempts
			}
		})
	}
	for i := range writes {
		if err := m.SetFetchAttempts(ctx, ref, uint32(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if sp, _, _ := m.Signpost(ctx, ref); sp.FetchAttempts != writes {
		t.Fatalf("final read: %d attempts, want %d", sp.FetchAttempts, writes)
	}
}

func TestRecordCacheIsBounded(t *testing.T) {
	c := newRecordCache(8)
	var last recordID
	for i := range 100 {
		last = recordID{signpostRecord, RefOf(fmt.Appendf(nil, "%d", i))}
		c.fill(last, 0, 0, cachedRecord{b: []byte{byte(i)}, found: true})
	}
	if n := c.len(); n != 8 {
		t.Fatalf("%d records cached, want the bound 8", n)
	}
	if rec, ok, _ := c.lookup(last, 0); !ok || rec.b[0] != 99 {
		t.Fatalf("the last record filled: %v, %v", rec, ok)
	}
}
