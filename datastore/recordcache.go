package datastore

import "sync"

// A recordCache holds the encoded signposts and blob metadata a MetaStore
// last read or wrote, found or not, so that reading one again costs a map
// lookup instead of a datastore Get. A fetched blob's records are read about
// a dozen times between the two peers within milliseconds (is it wanted,
// where is it, may it be served, what is offered, what was accepted), and
// with leveldb each read is a memtable skiplist walk and a table probe.
// Profiled over 10,000 blobs of 4 KiB fetched by a server (peer bench, both
// peers in one process), leveldb reads took 11% of the CPU without the cache
// and 3% with it.
//
// The datastore stays the truth; the cache only ever holds what it holds.
// Every write of a record goes through the MetaStore under the record's
// stripe lock, and brackets its commit: begin drops the cached record and
// end caches what was committed (or nothing, if the commit failed). Each
// also bumps the stripe's generation, and a reader that missed fills the
// cache only if the generation did not move while it read the datastore: a
// fill never brings back a record a write replaced, so reads of one record
// never go back in time.
type recordCache struct {
	mu   sync.Mutex
	recs map[recordID]cachedRecord
	gen  [stripes]uint64
	max  int // records held at most; past it, an arbitrary one is dropped
}

// maxCachedRecords bounds the cache: a fetch's records are read again within
// its lifetime, so the cache need hold only those of the fetches in flight
// and of the announcements just learned. About 300 bytes a record.
const maxCachedRecords = 1 << 14

type recordKind uint8

const (
	signpostRecord recordKind = iota + 1
	blobMetaRecord
)

// A recordID names a cached record; the zero recordID names none.
type recordID struct {
	kind recordKind
	ref  Ref
}

type cachedRecord struct {
	b     []byte // never modified
	found bool
}

func newRecordCache(max int) *recordCache {
	return &recordCache{recs: make(map[recordID]cachedRecord), max: max}
}

// lookup returns the cached record id, if any, and otherwise the generation
// of its stripe s, for fill.
func (c *recordCache) lookup(id recordID, s int) (rec cachedRecord, ok bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, ok = c.recs[id]
	return rec, ok, c.gen[s]
}

// fill caches rec, read from the datastore, unless stripe s was written since
// its generation was gen.
func (c *recordCache) fill(id recordID, s int, gen uint64, rec cachedRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen[s] == gen {
		c.put(id, rec)
	}
}

// begin drops the records ops write, before their commit.
func (c *recordCache) begin(ops []writeOp, stripe func(Ref) int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, op := range ops {
		if op.rec.kind != 0 {
			c.gen[stripe(op.rec.ref)]++
			delete(c.recs, op.rec)
		}
	}
}

// end caches the records ops wrote, after their commit; if it failed, what
// the datastore holds is unknown, and they stay uncached.
func (c *recordCache) end(ops []writeOp, stripe func(Ref) int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, op := range ops {
		if op.rec.kind == 0 {
			continue
		}
		c.gen[stripe(op.rec.ref)]++
		if err == nil {
			c.put(op.rec, cachedRecord{b: op.value, found: !op.del})
		}
	}
}

// put caches rec, dropping another record if the cache is full; the caller
// holds mu.
func (c *recordCache) put(id recordID, rec cachedRecord) {
	if _, ok := c.recs[id]; !ok && len(c.recs) >= c.max {
		for old := range c.recs { // map order: an arbitrary record
			delete(c.recs, old)
			break
		}
	}
	c.recs[id] = rec
}
