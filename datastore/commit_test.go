package datastore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
)

// countingDS counts batch commits and can fail them.
type countingDS struct {
	ds.Batching
	commits atomic.Int64
	fail    atomic.Bool
}

type countingBatch struct {
	ds.Batch
	d *countingDS
}

func (d *countingDS) Batch(ctx context.Context) (ds.Batch, error) {
	b, err := d.Batching.Batch(ctx)
	return countingBatch{b, d}, err
}

func (b countingBatch) Commit(ctx context.Context) error {
	b.d.commits.Add(1)
	if b.d.fail.Load() {
		return errors.New("disk on fire")
	}
	return b.Batch.Commit(ctx)
}

func TestGroupCommitSharesCommitsAndKeepsEveryWrite(t *testing.T) {
	d := &countingDS{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	m := NewMetaStore(d)
	const writers = 64
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			ref := RefOf(fmt.Appendf(nil, "%d", i))
			if err := m.SetFetchAttempts(t.Context(), ref, uint32(i+1)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i := range writers {
		sp, found, _ := m.Signpost(t.Context(), RefOf(fmt.Appendf(nil, "%d", i)))
		if !found || sp.FetchAttempts != uint32(i+1) {
			t.Fatalf("write %d lost: %+v", i, sp)
		}
	}
	if c := d.commits.Load(); c < 1 || c > writers {
		t.Fatalf("%d commits for %d writers", c, writers)
	}
	t.Logf("%d writers, %d commits", writers, d.commits.Load())
}

func TestGroupCommitFailureReachesEveryWriter(t *testing.T) {
	d := &countingDS{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	d.fail.Store(true)
	m := NewMetaStore(d)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range 16 {
		wg.Go(func() {
			if m.SetFetchAttempts(t.Context(), RefOf(fmt.Appendf(nil, "%d", i)), 1) != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() != 16 {
		t.Fatalf("%d of 16 writers saw the failed commit", failed.Load())
	}
	if _, found, _ := m.Signpost(t.Context(), RefOf([]byte("0"))); found {
		t.Fatal("a failed commit stored a record")
	}
}
