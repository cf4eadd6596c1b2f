package datastore

import (
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/peer"
)

func memStore() *MetaStore { return NewMetaStore(dssync.MutexWrap(ds.NewMapDatastore())) }

func levelStore(t *testing.T, dir string) (*MetaStore, func()) {
	t.Helper()
	d, err := leveldb.NewDatastore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return NewMetaStore(d), func() { d.Close() }
}

func TestSignpostPersistsOnLevelDB(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "datastore")
	m, closeDS := levelStore(t, dir)
	ref := RefOf([]byte("blob"))
	when := time.Unix(1700000000, 123456789)
	_, err := m.UpdateSignpost(t.Context(), ref, func(sp *Signpost) bool {
		return sp.Merge(Signpost{
			Locations: []Location{{Peer: peer.ID("peer-a"), WhenSeen: when, IsServer: true}},
			SgIDs:     []string{"/blobsync/sg/x"},
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SetFetchAttempts(t.Context(), ref, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := m.UpdateBlobMeta(t.Context(), ref, func(b *BlobMeta) bool {
		*b = BlobMeta{Size: 42, Public: true, Created: when, Shares: map[string]int32{"/blobsync/sg/x": 2, "/blobsync/sg/y": 0},
			Pinned: true, Holders: []peer.ID{"h1", "h2"}, Referenced: when.Add(time.Second), Accessed: when.Add(time.Minute)}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	closeDS()

	m, closeDS = levelStore(t, dir)
	defer closeDS()
	sp, found, err := m.Signpost(t.Context(), ref)
	if err != nil || !found {
		t.Fatalf("Signpost after reopen: %v, %v", found, err)
	}
	if sp.FetchAttempts != 4 || len(sp.Locations) != 1 || sp.Locations[0].Peer != "peer-a" ||
		!sp.Locations[0].WhenSeen.Equal(when) || !sp.Locations[0].IsServer || !slices.Equal(sp.SgIDs, []string{"/blobsync/sg/x"}) {
		t.Fatalf("signpost after reopen = %+v", sp)
	}
	meta, found, err := m.BlobMeta(t.Context(), ref)
	want := BlobMeta{Size: 42, Public: true, Created: when, Shares: map[string]int32{"/blobsync/sg/x": 2, "/blobsync/sg/y": 0},
		Pinned: true, Holders: []peer.ID{"h1", "h2"}, Referenced: when.Add(time.Second), Accessed: when.Add(time.Minute)}
	if err != nil || !found || !meta.Equal(want) || meta.TotalShares() != 2 || !meta.Owned() {
		t.Fatalf("BlobMeta after reopen = %+v, %v, %v", meta, found, err)
	}
	if _, found, _ := m.Signpost(t.Context(), RefOf([]byte("other"))); found {
		t.Fatal("signpost found for an unknown ref")
	}
}

func TestUpdateSignpostNoChangeWritesNothing(t *testing.T) {
	m := memStore()
	ref := RefOf([]byte("b"))
	if _, err := m.UpdateSignpost(t.Context(), ref, func(*Signpost) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := m.Signpost(t.Context(), ref); found {
		t.Fatal("an unchanged update stored a record")
	}
}

func TestConcurrentSignpostUpdatesLoseNothing(t *testing.T) {
	m := memStore()
	ref := RefOf([]byte("shared"))
	const n = 50
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := m.UpdateSignpost(t.Context(), ref, func(sp *Signpost) bool {
				return sp.AddSyncgroup(fmt.Sprintf("/blobsync/sg/%02d", i))
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	sp, _, _ := m.Signpost(t.Context(), ref)
	if len(sp.SgIDs) != n {
		t.Fatalf("%d syncgroups after %d concurrent adds", len(sp.SgIDs), n)
	}
}

func TestUpdateSignpostsBatch(t *testing.T) {
	m, closeDS := levelStore(t, filepath.Join(t.TempDir(), "ds"))
	defer closeDS()
	var refs []Ref
	for i := range 1000 {
		refs = append(refs, RefOf(fmt.Appendf(nil, "blob %d", i)))
	}
	refs = append(refs, refs[0]) // a duplicate in the batch is applied once
	calls := 0
	changed, err := m.UpdateSignposts(t.Context(), refs, func(_ Ref, sp *Signpost) bool {
		calls++
		return sp.AddSyncgroup("/blobsync/sg/bulk")
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1000 || len(changed) != 1000 {
		t.Fatalf("calls %d, changed %d; want 1000 each", calls, len(changed))
	}
	changed, err = m.UpdateSignposts(t.Context(), refs, func(_ Ref, sp *Signpost) bool {
		return sp.AddSyncgroup("/blobsync/sg/bulk")
	})
	if err != nil || len(changed) != 0 {
		t.Fatalf("second identical batch changed %d, err %v", len(changed), err)
	}
	count := 0
	err = m.ForEachSignpost(t.Context(), func(ref Ref, sp Signpost) error {
		count++
		if !sp.HasSyncgroup("/blobsync/sg/bulk") {
			return fmt.Errorf("%s lacks the syncgroup", ref)
		}
		return nil
	})
	if err != nil || count != 1000 {
		t.Fatalf("ForEachSignpost: %d records, %v", count, err)
	}
}

func TestCorruptRecordIsReported(t *testing.T) {
	d := dssync.MutexWrap(ds.NewMapDatastore())
	m := NewMetaStore(d)
	ref := RefOf([]byte("x"))
	if err := d.Put(t.Context(), signpostKey(ref), []byte{0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Signpost(t.Context(), ref); err == nil {
		t.Fatal("corrupt signpost decoded without error")
	}
	if err := m.ForEachSignpost(t.Context(), func(Ref, Signpost) error { return nil }); err == nil {
		t.Fatal("ForEachSignpost skipped a corrupt record silently")
	}
}

func TestAddHolderKeepsTheMostRecent(t *testing.T) {
	var m BlobMeta
	for i := range MaxHolders + 5 {
		m.AddHolder(peer.ID(fmt.Sprint(i)))
	}
	if len(m.Holders) != MaxHolders || m.Holders[0] != "5" {
		t.Fatalf("holders %v", m.Holders)
	}
	if m.AddHolder(peer.ID(fmt.Sprint(MaxHolders + 4))) {
		t.Fatal("re-adding the latest holder reported a change")
	}
	if !m.AddHolder("7") || m.Holders[len(m.Holders)-1] != "7" || len(m.Holders) != MaxHolders {
		t.Fatalf("re-adding an older holder: %v", m.Holders)
	}
}
