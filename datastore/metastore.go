package datastore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/blobsync/blobsync/datastore/internal/dspb"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// Key prefixes (DESIGN §4).
const (
	signpostPrefix = "/signpost/"
	blobPrefix     = "/blob/"
)

// MetaStore keeps signposts and blob metadata on a go-datastore. Updates of
// one record are serialised (read-modify-write under a per-ref lock), so
// concurrent merges never lose each other's changes. go-ds-leveldb fsyncs
// every commit, so bulk updates are written in one batch, and concurrent
// writers share commits (group commit). Records read or written lately are
// cached (recordCache), so the MetaStore must be its datastore's only writer
// of signposts and blob metadata.
type MetaStore struct {
	ds    ds.Batching
	w     committer // every write goes through it: group commit
	cache *recordCache
	seed  maphash.Seed
	locks [stripes]sync.Mutex
}

const stripes = 64 // record locks, and cache generations

// NewMetaStore returns a MetaStore on d. It does not close d.
func NewMetaStore(d ds.Batching) *MetaStore {
	return &MetaStore{ds: d, w: committer{ds: d, ldb: leveldbOf(d)}, cache: newRecordCache(maxCachedRecords), seed: maphash.MakeSeed()}
}

func signpostKey(ref Ref) ds.Key { return ds.RawKey(signpostPrefix + ref.String()) }
func blobKey(ref Ref) ds.Key     { return ds.RawKey(blobPrefix + ref.String()) }

func (id recordID) key() ds.Key {
	if id.kind == signpostRecord {
		return signpostKey(id.ref)
	}
	return blobKey(id.ref)
}

// signpostOp and blobMetaOp write ref's records; a nil value deletes.
func signpostOp(ref Ref, value []byte) writeOp {
	return writeOp{key: signpostKey(ref), value: value, del: value == nil, rec: recordID{signpostRecord, ref}}
}

func blobMetaOp(ref Ref, value []byte) writeOp {
	return writeOp{key: blobKey(ref), value: value, del: value == nil, rec: recordID{blobMetaRecord, ref}}
}

// read returns the record id from the cache or, failing that, the datastore;
// found is false if there is none.
func (m *MetaStore) read(ctx context.Context, id recordID) (b []byte, found bool, err error) {
	s := m.stripe(id.ref)
	rec, ok, gen := m.cache.lookup(id, s)
	if ok {
		return rec.b, rec.found, nil
	}
	b, err = m.ds.Get(ctx, id.key())
	if errors.Is(err, ds.ErrNotFound) {
		m.cache.fill(id, s, gen, cachedRecord{})
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	m.cache.fill(id, s, gen, cachedRecord{b: b, found: true})
	return b, true, nil
}

// commit durably writes ops through the group committer, keeping the cache
// true to what it wrote; commitUnsynced likewise without waiting for the disk.
func (m *MetaStore) commit(ctx context.Context, ops ...writeOp) error {
	return m.write(ctx, m.w.commit, ops)
}

func (m *MetaStore) commitUnsynced(ctx context.Context, ops ...writeOp) error {
	return m.write(ctx, m.w.commitUnsynced, ops)
}

func (m *MetaStore) write(ctx context.Context, commit func(context.Context, ...writeOp) error, ops []writeOp) error {
	m.cache.begin(ops, m.stripe)
	err := commit(ctx, ops...)
	m.cache.end(ops, m.stripe, err)
	return err
}

func (m *MetaStore) stripe(ref Ref) int {
	return int(maphash.String(m.seed, ref.c.KeyString()) % uint64(len(m.locks)))
}

// lock locks the stripes of refs in ascending order and returns the unlock.
func (m *MetaStore) lock(refs ...Ref) func() {
	idx := make([]int, 0, len(refs))
	for _, r := range refs {
		idx = append(idx, m.stripe(r))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		m.locks[i].Lock()
	}
	return func() {
		for _, i := range idx {
			m.locks[i].Unlock()
		}
	}
}

// Signpost returns ref's signpost; found is false (and sp zero) if there is none.
func (m *MetaStore) Signpost(ctx context.Context, ref Ref) (sp Signpost, found bool, err error) {
	return m.getSignpost(ctx, ref)
}

func (m *MetaStore) getSignpost(ctx context.Context, ref Ref) (Signpost, bool, error) {
	b, found, err := m.read(ctx, recordID{signpostRecord, ref})
	if err != nil {
		return Signpost{}, false, fmt.Errorf("signpost %s: %w", ref, err)
	}
	if !found {
		return Signpost{}, false, nil
	}
	sp, err := decodeSignpost(b)
	if err != nil {
		return Signpost{}, false, fmt.Errorf("signpost %s: %w", ref, err)
	}
	return sp, true, nil
}

// UpdateSignpost applies fn to ref's signpost (zero if none) and stores the
// result if fn reports a change. It returns the signpost as stored.
func (m *MetaStore) UpdateSignpost(ctx context.Context, ref Ref, fn func(*Signpost) bool) (Signpost, error) {
	unlock := m.lock(ref)
	defer unlock()
	sp, _, err := m.getSignpost(ctx, ref)
	if err != nil {
		return Signpost{}, err
	}
	if !fn(&sp) {
		return sp, nil
	}
	if err := m.commit(ctx, signpostOp(ref, encodeSignpost(sp))); err != nil {
		return Signpost{}, fmt.Errorf("signpost %s: %w", ref, err)
	}
	return sp, nil
}

// UpdateSignposts applies fn to the signpost of each ref and writes every
// changed one in a single batch. It returns the refs whose signposts changed.
func (m *MetaStore) UpdateSignposts(ctx context.Context, refs []Ref, fn func(Ref, *Signpost) bool) ([]Ref, error) {
	unlock := m.lock(refs...)
	defer unlock()
	var changed []Ref
	var ops []writeOp
	seen := make(map[Ref]bool, len(refs))
	for _, ref := range refs {
		if seen[ref] {
			continue
		}
		seen[ref] = true
		sp, _, err := m.getSignpost(ctx, ref)
		if err != nil {
			return nil, err
		}
		if !fn(ref, &sp) {
			continue
		}
		ops = append(ops, signpostOp(ref, encodeSignpost(sp)))
		changed = append(changed, ref)
	}
	if err := m.commit(ctx, ops...); err != nil {
		return nil, fmt.Errorf("signposts: %w", err)
	}
	return changed, nil
}

// SetFetchAttempts records this peer's fetch attempts for ref.
func (m *MetaStore) SetFetchAttempts(ctx context.Context, ref Ref, n uint32) error {
	_, err := m.UpdateSignpost(ctx, ref, func(sp *Signpost) bool {
		if sp.FetchAttempts == n {
			return false
		}
		sp.FetchAttempts = n
		return true
	})
	return err
}

// DeleteSignpost removes ref's signpost, if any.
func (m *MetaStore) DeleteSignpost(ctx context.Context, ref Ref) error {
	unlock := m.lock(ref)
	defer unlock()
	return m.commit(ctx, signpostOp(ref, nil))
}

// ForEachSignpost calls fn for every stored signpost until fn returns an error.
// A record that does not decode is reported, not skipped.
func (m *MetaStore) ForEachSignpost(ctx context.Context, fn func(Ref, Signpost) error) error {
	return m.forEach(ctx, signpostPrefix, func(ref Ref, b []byte) error {
		sp, err := decodeSignpost(b)
		if err != nil {
			return fmt.Errorf("signpost %s: %w", ref, err)
		}
		return fn(ref, sp)
	})
}

func (m *MetaStore) forEach(ctx context.Context, prefix string, fn func(Ref, []byte) error) error {
	return m.scan(ctx, prefix, func(key string, value []byte) error {
		ref, err := ParseRef(strings.TrimPrefix(key, prefix))
		if err != nil {
			return fmt.Errorf("datastore key %q: %w", key, err)
		}
		return fn(ref, value)
	})
}

// BlobMeta returns ref's metadata; found is false if there is none.
func (m *MetaStore) BlobMeta(ctx context.Context, ref Ref) (meta BlobMeta, found bool, err error) {
	b, found, err := m.read(ctx, recordID{blobMetaRecord, ref})
	if err != nil {
		return BlobMeta{}, false, fmt.Errorf("blob metadata %s: %w", ref, err)
	}
	if !found {
		return BlobMeta{}, false, nil
	}
	meta, err = decodeBlobMeta(b)
	if err != nil {
		return BlobMeta{}, false, fmt.Errorf("blob metadata %s: %w", ref, err)
	}
	return meta, true, nil
}

// UpdateBlobMeta applies fn to ref's metadata (zero if none) and stores the
// result if fn reports a change. Updates of one ref are serialised, so a
// read-modify-write of its shares is atomic.
func (m *MetaStore) UpdateBlobMeta(ctx context.Context, ref Ref, fn func(*BlobMeta) bool) (BlobMeta, error) {
	return m.updateBlobMeta(ctx, ref, fn, m.commit)
}

// UpdateBlobMetaUnsynced is UpdateBlobMeta for a change whose loss in a
// crash is harmless: it returns once the change is written and visible, not
// once it is on disk (the next durable write of this store takes it along).
func (m *MetaStore) UpdateBlobMetaUnsynced(ctx context.Context, ref Ref, fn func(*BlobMeta) bool) (BlobMeta, error) {
	return m.updateBlobMeta(ctx, ref, fn, m.commitUnsynced)
}

func (m *MetaStore) updateBlobMeta(ctx context.Context, ref Ref, fn func(*BlobMeta) bool, commit func(context.Context, ...writeOp) error) (BlobMeta, error) {
	unlock := m.lock(ref)
	defer unlock()
	meta, _, err := m.BlobMeta(ctx, ref)
	if err != nil {
		return BlobMeta{}, err
	}
	if !fn(&meta) {
		return meta, nil
	}
	if err := commit(ctx, blobMetaOp(ref, encodeBlobMeta(meta))); err != nil {
		return BlobMeta{}, fmt.Errorf("blob metadata %s: %w", ref, err)
	}
	return meta, nil
}

// UpdateBlobAndSignpost applies fnMeta to ref's metadata and fnSp to its
// signpost under one lock, and writes whichever changed in one batch, without
// waiting for the disk, like UpdateBlobMetaUnsynced: for a record that is
// rebuilt if a crash loses it.
func (m *MetaStore) UpdateBlobAndSignpostUnsynced(ctx context.Context, ref Ref, fnMeta func(*BlobMeta) bool, fnSp func(*Signpost) bool) error {
	unlock := m.lock(ref)
	defer unlock()
	meta, _, err := m.BlobMeta(ctx, ref)
	if err != nil {
		return err
	}
	sp, _, err := m.getSignpost(ctx, ref)
	if err != nil {
		return err
	}
	var ops []writeOp
	if fnMeta(&meta) {
		ops = append(ops, blobMetaOp(ref, encodeBlobMeta(meta)))
	}
	if fnSp(&sp) {
		ops = append(ops, signpostOp(ref, encodeSignpost(sp)))
	}
	if err := m.commitUnsynced(ctx, ops...); err != nil {
		return fmt.Errorf("blob %s: %w", ref, err)
	}
	return nil
}

// DeleteBlobMeta removes ref's metadata, if any.
func (m *MetaStore) DeleteBlobMeta(ctx context.Context, ref Ref) error {
	unlock := m.lock(ref)
	defer unlock()
	return m.commit(ctx, blobMetaOp(ref, nil))
}

var errCorrupt = errors.New("corrupt record")

func encodeSignpost(sp Signpost) []byte {
	p := &dspb.Signpost{SgIds: sp.SgIDs, FetchAttempts: sp.FetchAttempts}
	for _, l := range sp.Locations {
		p.Locations = append(p.Locations, &dspb.Location{
			Peer: []byte(l.Peer), WhenSeenUnixNano: unixNano(l.WhenSeen), IsServer: l.IsServer, IsProxy: l.IsProxy,
		})
	}
	b, err := proto.Marshal(p)
	if err != nil {
		panic(fmt.Sprintf("datastore: marshalling a signpost: %v", err)) // cannot happen: plain message
	}
	return b
}

func decodeSignpost(b []byte) (Signpost, error) {
	var p dspb.Signpost
	if err := proto.Unmarshal(b, &p); err != nil {
		return Signpost{}, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	sp := Signpost{SgIDs: p.SgIds, FetchAttempts: p.FetchAttempts}
	for _, l := range p.Locations {
		sp.Locations = append(sp.Locations, Location{
			Peer: peer.ID(l.Peer), WhenSeen: fromUnixNano(l.WhenSeenUnixNano), IsServer: l.IsServer, IsProxy: l.IsProxy,
		})
	}
	return sp, nil
}

func encodeBlobMeta(meta BlobMeta) []byte {
	p := &dspb.BlobMeta{
		Size: uint64(meta.Size), Public: meta.Public, CreatedUnixNano: unixNano(meta.Created),
		Shares: meta.Shares, Pinned: meta.Pinned,
		ReferencedUnixNano: unixNano(meta.Referenced), AccessedUnixNano: unixNano(meta.Accessed),
	}
	for _, h := range meta.Holders {
		p.Holders = append(p.Holders, []byte(h))
	}
	return mustMarshal(p)
}

func decodeBlobMeta(b []byte) (BlobMeta, error) {
	var p dspb.BlobMeta
	if err := proto.Unmarshal(b, &p); err != nil {
		return BlobMeta{}, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	m := BlobMeta{
		Size: int64(p.Size), Public: p.Public, Created: fromUnixNano(p.CreatedUnixNano),
		Shares: p.Shares, Pinned: p.Pinned,
		Referenced: fromUnixNano(p.ReferencedUnixNano), Accessed: fromUnixNano(p.AccessedUnixNano),
	}
	for _, h := range p.Holders {
		m.Holders = append(m.Holders, peer.ID(h))
	}
	return m, nil
}

// unixNano and fromUnixNano store the zero time as 0 (its UnixNano is undefined).
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
