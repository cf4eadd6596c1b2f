package datastore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/peer"
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

// An unsynced update on go-ds-leveldb goes straight to its leveldb, under
// the key encoding the datastore reads back, and survives a reopen.
func TestUnsyncedUpdateOnLevelDB(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "datastore")
	m, closeDS := levelStore(t, dir)
	if m.w.ldb == nil {
		t.Fatal("go-ds-leveldb's leveldb not found: unsynced writes would sync")
	}
	ref, other := RefOf([]byte("granted")), RefOf([]byte("untouched"))
	grant := func(b *BlobMeta) bool {
		b.Shares = map[string]int32{"/blobsync/sg/x": 0}
		return b.AddHolder("server")
	}
	got, err := m.UpdateBlobMetaUnsynced(t.Context(), ref, grant)
	if err != nil {
		t.Fatal(err)
	}
	if now, _, _ := m.BlobMeta(t.Context(), ref); !now.Equal(got) || len(now.Holders) != 1 {
		t.Fatalf("read back %+v, wrote %+v", now, got)
	}
	if _, err := m.UpdateBlobMetaUnsynced(t.Context(), other, func(*BlobMeta) bool { return false }); err != nil {
		t.Fatal(err)
	}
	fetched := RefOf([]byte("fetched"))
	err = m.UpdateBlobAndSignpostUnsynced(t.Context(), fetched,
		func(b *BlobMeta) bool { b.Size = 7; return true },
		func(sp *Signpost) bool { sp.SgIDs = []string{"/blobsync/sg/x"}; return true })
	if err != nil {
		t.Fatal(err)
	}
	closeDS()

	m, closeDS = levelStore(t, dir)
	defer closeDS()
	after, found, err := m.BlobMeta(t.Context(), ref)
	if err != nil || !found || !after.Equal(got) {
		t.Fatalf("after reopen: %+v, %v, %v; want %+v", after, found, err, got)
	}
	if _, found, _ := m.BlobMeta(t.Context(), other); found {
		t.Fatal("an update that changed nothing wrote a record")
	}
	meta, _, errM := m.BlobMeta(t.Context(), fetched)
	sp, _, errS := m.Signpost(t.Context(), fetched)
	if errM != nil || errS != nil || meta.Size != 7 || !slices.Equal(sp.SgIDs, []string{"/blobsync/sg/x"}) {
		t.Fatalf("blob and signpost after reopen: %+v, %+v (%v, %v)", meta, sp, errM, errS)
	}
}

// On another datastore an unsynced update is an ordinary durable commit.
func TestUnsyncedUpdateElsewhereCommits(t *testing.T) {
	d := &countingDS{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	m := NewMetaStore(d)
	ref := RefOf([]byte("granted"))
	if _, err := m.UpdateBlobMetaUnsynced(t.Context(), ref, func(b *BlobMeta) bool { return b.AddHolder("server") }); err != nil {
		t.Fatal(err)
	}
	if c := d.commits.Load(); c != 1 {
		t.Fatalf("%d commits, want 1", c)
	}
	d.fail.Store(true)
	if _, err := m.UpdateBlobMetaUnsynced(t.Context(), ref, func(b *BlobMeta) bool { return b.AddHolder("other") }); err == nil {
		t.Fatal("a failed commit was not reported")
	}
	if meta, _, _ := m.BlobMeta(t.Context(), ref); !slices.Equal(meta.Holders, []peer.ID{"server"}) {
		t.Fatalf("holders after a failed commit = %v", meta.Holders)
	}
}
