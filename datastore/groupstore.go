package datastore

import (
	"context"
	"fmt"
	"strings"

	"github.com/blobsync/blobsync/datastore/internal/dspb"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"
)

// Key prefixes of syncgroup records (DESIGN §4). A syncgroup ID has no '/'
// after SyncgroupPrefix, so "/sg" + id is a key whose last component is the
// group's name.
const (
	groupPrefix     = "/sg"
	logPrefix       = "/sglog"
	watermarkPrefix = "/watermark"
)

func groupKey(id string) ds.Key { return ds.NewKey(groupPrefix + id) }
func logKey(id string, origin peer.ID, seq uint64) ds.Key {
	return ds.NewKey(fmt.Sprintf("%s%s/%s/%020d", logPrefix, id, origin, seq))
}
func watermarkKey(id string, origin peer.ID) ds.Key {
	return ds.NewKey(fmt.Sprintf("%s%s/%s", watermarkPrefix, id, origin))
}

// GroupChange is what one step of a syncgroup's life writes, atomically.
type GroupChange struct {
	Group      *Group             // stored at /sg/<id> if set
	Entries    []LogEntry         // appended to the log
	Watermarks map[peer.ID]uint64 // new watermarks per origin
	Signposts  map[Ref]Signpost   // merged into the refs' signposts
}

// ApplyGroupChange writes ch for syncgroup id in one batch and returns the
// refs whose signposts changed. The caller serialises changes of one group.
func (m *MetaStore) ApplyGroupChange(ctx context.Context, id string, ch GroupChange) ([]Ref, error) {
	refs := make([]Ref, 0, len(ch.Signposts))
	for ref := range ch.Signposts {
		refs = append(refs, ref)
	}
	unlock := m.lock(refs...)
	defer unlock()
	var ops []writeOp
	if ch.Group != nil {
		ops = append(ops, writeOp{key: groupKey(id), value: encodeGroup(*ch.Group)})
	}
	for _, e := range ch.Entries {
		ops = append(ops, writeOp{key: logKey(id, e.Origin, e.Seq), value: encodeLogEntry(e)})
	}
	for origin, seq := range ch.Watermarks {
		ops = append(ops, writeOp{key: watermarkKey(id, origin), value: mustMarshal(&dspb.Watermark{Seq: seq})})
	}
	var changed []Ref
	for _, ref := range refs {
		sp, _, err := m.getSignpost(ctx, ref)
		if err != nil {
			return nil, err
		}
		if !sp.Merge(ch.Signposts[ref]) {
			continue
		}
		ops = append(ops, signpostOp(ref, encodeSignpost(sp)))
		changed = append(changed, ref)
	}
	if err := m.commit(ctx, ops...); err != nil {
		return nil, fmt.Errorf("syncgroup %s: %w", id, err)
	}
	return changed, nil
}

// Groups returns every syncgroup record.
func (m *MetaStore) Groups(ctx context.Context) ([]Group, error) {
	var out []Group
	err := m.scan(ctx, groupPrefix, func(key string, b []byte) error {
		g, err := decodeGroup(b)
		if err != nil {
			return fmt.Errorf("datastore key %s: %w", key, err)
		}
		out = append(out, g)
		return nil
	})
	return out, err
}

// Watermarks returns how far this peer holds each origin's entries of id.
func (m *MetaStore) Watermarks(ctx context.Context, id string) (map[peer.ID]uint64, error) {
	out := map[peer.ID]uint64{}
	err := m.scan(ctx, watermarkPrefix+id, func(key string, b []byte) error {
		p, err := peer.Decode(key[strings.LastIndexByte(key, '/')+1:])
		if err != nil {
			return fmt.Errorf("datastore key %s: %w", key, err)
		}
		var w dspb.Watermark
		if err := proto.Unmarshal(b, &w); err != nil {
			return fmt.Errorf("datastore key %s: %w: %v", key, errCorrupt, err)
		}
		out[p] = w.Seq
		return nil
	})
	return out, err
}

// LogEntries returns origin's entries of id with Seq > after, in order, at most limit.
func (m *MetaStore) LogEntries(ctx context.Context, id string, origin peer.ID, after uint64, limit int) ([]LogEntry, error) {
	start := logKey(id, origin, after).String()
	res, err := m.ds.Query(ctx, query.Query{
		Prefix:  fmt.Sprintf("%s%s/%s", logPrefix, id, origin),
		Orders:  []query.Order{query.OrderByKey{}},
		Filters: []query.Filter{query.FilterKeyCompare{Op: query.GreaterThan, Key: start}},
		Limit:   limit,
	})
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var out []LogEntry
	for r := range res.Next() {
		if r.Error != nil {
			return nil, r.Error
		}
		e, err := decodeLogEntry(r.Value)
		if err != nil {
			return nil, fmt.Errorf("datastore key %s: %w", r.Key, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// scan calls fn with every key and value under prefix.
func (m *MetaStore) scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error {
	res, err := m.ds.Query(ctx, query.Query{Prefix: prefix})
	if err != nil {
		return err
	}
	defer res.Close()
	for r := range res.Next() {
		if r.Error != nil {
			return r.Error
		}
		if err := fn(r.Key, r.Value); err != nil {
			return err
		}
	}
	return nil
}

func encodeMember(mb Member) *dspb.Member {
	p := &dspb.Member{Peer: []byte(mb.Peer), Role: uint32(mb.Role), SinceUnixNano: unixNano(mb.Since)}
	for _, a := range mb.Addrs {
		p.Addrs = append(p.Addrs, a.Bytes())
	}
	return p
}

func decodeMember(p *dspb.Member) (Member, error) {
	id, err := peer.IDFromBytes(p.GetPeer())
	if err != nil {
		return Member{}, fmt.Errorf("%w: member peer ID: %v", errCorrupt, err)
	}
	mb := Member{Peer: id, Role: Role(p.GetRole()), Since: fromUnixNano(p.GetSinceUnixNano())}
	for _, b := range p.GetAddrs() {
		a, err := ma.NewMultiaddrBytes(b)
		if err != nil {
			return Member{}, fmt.Errorf("%w: member address: %v", errCorrupt, err)
		}
		mb.Addrs = append(mb.Addrs, a)
	}
	return mb, nil
}

func encodeGroup(g Group) []byte {
	p := &dspb.Group{
		Id: g.Spec.ID, Creator: []byte(g.Spec.Creator), Open: g.Spec.ACL.Open,
		CreatedUnixNano: unixNano(g.Spec.Created), MyRole: uint32(g.MyRole),
	}
	for _, a := range g.Spec.ACL.Allow {
		p.Allow = append(p.Allow, []byte(a))
	}
	for _, mb := range g.Members {
		p.Members = append(p.Members, encodeMember(mb))
	}
	return mustMarshal(p)
}

func decodeGroup(b []byte) (Group, error) {
	var p dspb.Group
	if err := proto.Unmarshal(b, &p); err != nil {
		return Group{}, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	g := Group{Spec: Spec{ID: p.Id, Creator: peer.ID(p.Creator), ACL: ACL{Open: p.Open}, Created: fromUnixNano(p.CreatedUnixNano)}, MyRole: Role(p.MyRole)}
	for _, a := range p.Allow {
		g.Spec.ACL.Allow = append(g.Spec.ACL.Allow, peer.ID(a))
	}
	for _, pm := range p.Members {
		mb, err := decodeMember(pm)
		if err != nil {
			return Group{}, err
		}
		g.Members = append(g.Members, mb)
	}
	return g, nil
}

func encodeLogEntry(e LogEntry) []byte {
	p := &dspb.LogEntry{Origin: []byte(e.Origin), Seq: e.Seq, TimeUnixNano: unixNano(e.Time)}
	if e.Blob != nil {
		p.BlobRef, p.BlobHolder = e.Blob.Ref.Bytes(), []byte(e.Blob.Holder)
	}
	if e.Member != nil {
		p.Member = encodeMember(*e.Member)
	}
	return mustMarshal(p)
}

func decodeLogEntry(b []byte) (LogEntry, error) {
	var p dspb.LogEntry
	if err := proto.Unmarshal(b, &p); err != nil {
		return LogEntry{}, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	e := LogEntry{Origin: peer.ID(p.Origin), Seq: p.Seq, Time: fromUnixNano(p.TimeUnixNano)}
	if p.BlobRef != nil {
		ref, err := RefFromBytes(p.BlobRef)
		if err != nil {
			return LogEntry{}, fmt.Errorf("%w: %v", errCorrupt, err)
		}
		e.Blob = &BlobAnnouncement{Ref: ref, Holder: peer.ID(p.BlobHolder)}
	}
	if p.Member != nil {
		mb, err := decodeMember(p.Member)
		if err != nil {
			return LogEntry{}, err
		}
		e.Member = &mb
	}
	return e, nil
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("datastore: marshalling %T: %v", m, err)) // cannot happen: plain messages
	}
	return b
}
