package datastore

import (
	"context"
	"sync"

	ds "github.com/ipfs/go-datastore"
	dsleveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/opt"
)

// committer writes to a datastore by group commit: writers that arrive while
// a commit is under way are written together in the next one, with a single
// fsync (go-ds-leveldb syncs every commit). Each writer still returns only
// once its own writes are durable; a lone writer waits for nobody. The first
// writer to find no commit under way becomes the leader and commits until
// the queue is empty: no background goroutine.
type committer struct {
	ds      ds.Batching
	ldb     *leveldb.DB // ds's own, if ds is go-ds-leveldb's: for commitUnsynced
	mu      sync.Mutex
	leading bool
	pending []*commitReq
}

type commitReq struct {
	ops  []writeOp
	done chan struct{}
	err  error
}

// writeOp is one Put (value set) or Delete (value nil and del set).
type writeOp struct {
	key   ds.Key
	value []byte
	del   bool
	rec   recordID // the cached record key holds, if any
}

// commit durably writes ops, all or none, and returns the commit's error.
func (c *committer) commit(ctx context.Context, ops ...writeOp) error {
	if len(ops) == 0 {
		return nil
	}
	req := &commitReq{ops: ops, done: make(chan struct{})}
	c.mu.Lock()
	c.pending = append(c.pending, req)
	if c.leading {
		c.mu.Unlock()
		<-req.done
		return req.err
	}
	c.leading = true
	for len(c.pending) > 0 {
		batch := c.pending
		c.pending = nil
		c.mu.Unlock()
		err := c.write(ctx, batch)
		for _, r := range batch {
			r.err = err
			close(r.done)
		}
		c.mu.Lock()
	}
	c.leading = false
	c.mu.Unlock()
	return req.err
}

// write commits every request of batch in one datastore batch.
func (c *committer) write(ctx context.Context, batch []*commitReq) error {
	// A commit outlives any one waiter's context: others share it.
	ctx = context.WithoutCancel(ctx)
	b, err := c.ds.Batch(ctx)
	if err != nil {
		return err
	}
	for _, r := range batch {
		for _, op := range r.ops {
			if op.del {
				err = b.Delete(ctx, op.key)
			} else {
				err = b.Put(ctx, op.key, op.value)
			}
			if err != nil {
				return err
			}
		}
	}
	return b.Commit(ctx)
}

// leveldbOf returns d's leveldb if d is go-ds-leveldb's Datastore, else nil.
func leveldbOf(d ds.Batching) *leveldb.DB {
	if l, ok := d.(*dsleveldb.Datastore); ok {
		return l.DB
	}
	return nil
}

// commitUnsynced writes ops, all or none, without waiting for the disk: a
// crash may lose them until a later commit is durable, and that commit makes
// them durable too (leveldb journals writes in order). For changes whose loss
// is harmless; on a datastore other than go-ds-leveldb it is commit.
func (c *committer) commitUnsynced(ctx context.Context, ops ...writeOp) error {
	if c.ldb == nil {
		return c.commit(ctx, ops...)
	}
	var b leveldb.Batch
	for _, op := range ops {
		if op.del {
			b.Delete(op.key.Bytes()) // go-ds-leveldb's own key encoding
		} else {
			b.Put(op.key.Bytes(), op.value)
		}
	}
	return c.ldb.Write(&b, &opt.WriteOptions{Sync: false})
}
