package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"

	ds "github.com/ipfs/go-datastore"
	"github.com/syndtr/goleveldb/leveldb/util"
)

// The datastore's tables carry bloom filters: a read of a key a table lacks
// loads none of its data blocks. Reads of 200 keys that are there load about
// 200 blocks into the block cache; reads of 200 that are not, between them,
// load a few filter blocks.
func TestDatastoreReadsOfMissingKeysSkipTables(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "datastore")
	d, err := openDatastore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b, err := d.Batch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20000 {
		if err := b.Put(ctx, ds.NewKey(fmt.Sprintf("/k/%05d", i)), make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.DB.CompactRange(util.Range{}); err != nil { // the memtable becomes tables
		t.Fatal(err)
	}
	cachedAfter := func(suffix string) int {
		t.Helper()
		if err := d.Close(); err != nil { // and reopen: an empty block cache
			t.Fatal(err)
		}
		if d, err = openDatastore(dir); err != nil {
			t.Fatal(err)
		}
		for i := range 200 {
			_, err := d.Get(ctx, ds.NewKey(fmt.Sprintf("/k/%05d%s", i*100, suffix)))
			if (suffix == "" && err != nil) || (suffix != "" && err != ds.ErrNotFound) {
				t.Fatalf("key %05d%s: %v", i*100, suffix, err)
			}
		}
		p, err := d.DB.GetProperty("leveldb.cachedblock")
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	present, missing := cachedAfter(""), cachedAfter("x")
	defer d.Close()
	if missing*4 > present {
		t.Fatalf("reads of missing keys cached %d bytes of blocks, of present keys %d: the tables have no filter", missing, present)
	}
}
