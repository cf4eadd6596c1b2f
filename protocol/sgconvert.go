package protocol

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Conversions between the syncgroup protocol's wire messages and the domain
// types. The fromWire side validates strictly: one invalid part rejects the
// whole message, so bad input never reaches the Syncgroups (or the caller) in
// part. Errors from the helpers are plain; requestFromWire and the response
// decoders wrap them in ErrBadRequest or ErrProtocol.

// sgOp is the operation of a syncgroup request.
type sgOp int

const (
	opJoin sgOp = iota + 1
	opMembers
	opPull
	opAnnounce
)

// sgCall is a validated SgRequest.
type sgCall struct {
	op      sgOp
	role    datastore.Role       // join
	addrs   []ma.Multiaddr       // join
	since   map[peer.ID]uint64   // pull; never holds a zero Seq
	limit   int                  // pull: in [1, MaxPullEntries]
	entries []datastore.LogEntry // announce
}

// requestFromWire validates a caller's request; errors wrap ErrBadRequest.
// Times later than now are clamped to now.
func requestFromWire(req *pb.SgRequest, now time.Time) (sgCall, error) {
	c, err := decodeRequest(req, now)
	if err != nil {
		return sgCall{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return c, nil
}

func decodeRequest(req *pb.SgRequest, now time.Time) (sgCall, error) {
	switch op := req.GetOp().(type) {
	case *pb.SgRequest_Join:
		role, err := roleFromWire(op.Join.GetRole())
		if err != nil {
			return sgCall{}, err
		}
		addrs, err := addrsFromWire(op.Join.GetAddrs())
		if err != nil {
			return sgCall{}, err
		}
		return sgCall{op: opJoin, role: role, addrs: addrs}, nil
	case *pb.SgRequest_Members:
		return sgCall{op: opMembers}, nil
	case *pb.SgRequest_Pull:
		since, err := watermarksFromWire(op.Pull.GetSince())
		if err != nil {
			return sgCall{}, err
		}
		return sgCall{op: opPull, since: since, limit: pullLimit(int64(op.Pull.GetLimit()))}, nil
	case *pb.SgRequest_Announce:
		ws := op.Announce.GetEntries()
		if len(ws) > MaxAnnounceEntries {
			return sgCall{}, fmt.Errorf("%d entries in one announce; the most is %d", len(ws), MaxAnnounceEntries)
		}
		entries, err := entriesFromWire(ws, now)
		if err != nil {
			return sgCall{}, err
		}
		return sgCall{op: opAnnounce, entries: entries}, nil
	default:
		return sgCall{}, errors.New("no operation")
	}
}

// pullLimit is the number of entries a Pull may return: limit, or
// MaxPullEntries when limit is not positive or above it.
func pullLimit(limit int64) int {
	if limit <= 0 || limit > MaxPullEntries {
		return MaxPullEntries
	}
	return int(limit)
}

// watermarksToWire converts since in origin order; zero marks (nothing held)
// are left out, as they say nothing.
func watermarksToWire(since map[peer.ID]uint64) []*pb.Watermark {
	var out []*pb.Watermark
	for _, o := range slices.Sorted(maps.Keys(since)) {
		if seq := since[o]; seq > 0 {
			out = append(out, &pb.Watermark{Origin: []byte(o), Seq: seq})
		}
	}
	return out
}

func watermarksFromWire(ws []*pb.Watermark) (map[peer.ID]uint64, error) {
	if len(ws) > MaxPullWatermarks {
		return nil, fmt.Errorf("%d watermarks; the most is %d", len(ws), MaxPullWatermarks)
	}
	since := make(map[peer.ID]uint64, len(ws))
	for i, w := range ws {
		o, err := peerFromWire(w.GetOrigin())
		if err != nil {
			return nil, fmt.Errorf("watermark %d: origin: %v", i, err)
		}
		if w.GetSeq() == 0 {
			return nil, fmt.Errorf("watermark %d: seq 0", i)
		}
		if _, dup := since[o]; dup {
			return nil, fmt.Errorf("watermark %d: origin %s appears twice", i, o)
		}
		since[o] = w.GetSeq()
	}
	return since, nil
}

func specToWire(s datastore.Spec) *pb.SgSpec {
	w := &pb.SgSpec{Id: s.ID, Creator: []byte(s.Creator), Open: s.ACL.Open, CreatedUnixNano: timeToWire(s.Created)}
	for _, p := range s.ACL.Allow {
		w.Allow = append(w.Allow, []byte(p))
	}
	return w
}

// specFromWire validates a peer's spec for syncgroup id.
func specFromWire(w *pb.SgSpec, id string, now time.Time) (datastore.Spec, error) {
	if w == nil {
		return datastore.Spec{}, errors.New("no spec")
	}
	if err := datastore.CheckSyncgroupID(w.GetId()); err != nil {
		return datastore.Spec{}, fmt.Errorf("spec: %v", err)
	}
	if w.GetId() != id {
		return datastore.Spec{}, fmt.Errorf("spec of %q, want %s", sanitize(w.GetId()), id)
	}
	creator, err := peerFromWire(w.GetCreator())
	if err != nil {
		return datastore.Spec{}, fmt.Errorf("spec creator: %v", err)
	}
	s := datastore.Spec{ID: w.GetId(), Creator: creator, ACL: datastore.ACL{Open: w.GetOpen()}, Created: timeFromWire(w.GetCreatedUnixNano(), now)}
	for i, b := range w.GetAllow() {
		p, err := peerFromWire(b)
		if err != nil {
			return datastore.Spec{}, fmt.Errorf("spec allow list entry %d: %v", i, err)
		}
		s.ACL.Allow = append(s.ACL.Allow, p)
	}
	return s, nil
}

func memberToWire(m datastore.Member) *pb.SgMember {
	return &pb.SgMember{Peer: []byte(m.Peer), Role: uint32(m.Role), Addrs: addrsToWire(m.Addrs), SinceUnixNano: timeToWire(m.Since)}
}

func memberFromWire(w *pb.SgMember, now time.Time) (datastore.Member, error) {
	p, err := peerFromWire(w.GetPeer())
	if err != nil {
		return datastore.Member{}, fmt.Errorf("member: %v", err)
	}
	role, err := roleFromWire(w.GetRole())
	if err != nil {
		return datastore.Member{}, fmt.Errorf("member %s: %v", p, err)
	}
	addrs, err := addrsFromWire(w.GetAddrs())
	if err != nil {
		return datastore.Member{}, fmt.Errorf("member %s: %v", p, err)
	}
	return datastore.Member{Peer: p, Role: role, Addrs: addrs, Since: timeFromWire(w.GetSinceUnixNano(), now)}, nil
}

func membersToWire(ms []datastore.Member) []*pb.SgMember {
	out := make([]*pb.SgMember, len(ms))
	for i, m := range ms {
		out[i] = memberToWire(m)
	}
	return out
}

// membersFromWire validates a member list: one entry per peer.
func membersFromWire(ws []*pb.SgMember, now time.Time) ([]datastore.Member, error) {
	out := make([]datastore.Member, 0, len(ws))
	seen := make(map[peer.ID]bool, len(ws))
	for _, w := range ws {
		m, err := memberFromWire(w, now)
		if err != nil {
			return nil, err
		}
		if seen[m.Peer] {
			return nil, fmt.Errorf("member %s listed twice", m.Peer)
		}
		seen[m.Peer] = true
		out = append(out, m)
	}
	return out, nil
}

func entryToWire(e datastore.LogEntry) *pb.SgEntry {
	w := &pb.SgEntry{Origin: []byte(e.Origin), Seq: e.Seq, TimeUnixNano: timeToWire(e.Time)}
	if e.Blob != nil {
		w.BlobRef, w.BlobHolder = e.Blob.Ref.Bytes(), []byte(e.Blob.Holder)
	}
	if e.Member != nil {
		w.Member = memberToWire(*e.Member)
	}
	return w
}

func entryFromWire(w *pb.SgEntry, now time.Time) (datastore.LogEntry, error) {
	origin, err := peerFromWire(w.GetOrigin())
	if err != nil {
		return datastore.LogEntry{}, fmt.Errorf("origin: %v", err)
	}
	if w.GetSeq() == 0 {
		return datastore.LogEntry{}, errors.New("seq 0")
	}
	e := datastore.LogEntry{Origin: origin, Seq: w.GetSeq(), Time: timeFromWire(w.GetTimeUnixNano(), now)}
	hasBlob := len(w.GetBlobRef()) > 0 || len(w.GetBlobHolder()) > 0
	switch {
	case hasBlob && w.GetMember() != nil:
		return datastore.LogEntry{}, errors.New("both a blob and a member")
	case hasBlob:
		ref, err := datastore.RefFromBytes(w.GetBlobRef())
		if err != nil {
			return datastore.LogEntry{}, err
		}
		holder, err := peerFromWire(w.GetBlobHolder())
		if err != nil {
			return datastore.LogEntry{}, fmt.Errorf("blob holder: %v", err)
		}
		e.Blob = &datastore.BlobAnnouncement{Ref: ref, Holder: holder}
	case w.GetMember() != nil:
		m, err := memberFromWire(w.GetMember(), now)
		if err != nil {
			return datastore.LogEntry{}, err
		}
		e.Member = &m
	default:
		return datastore.LogEntry{}, errors.New("neither a blob nor a member")
	}
	return e, nil
}

func entriesToWire(es []datastore.LogEntry) []*pb.SgEntry {
	out := make([]*pb.SgEntry, len(es))
	for i, e := range es {
		out[i] = entryToWire(e)
	}
	return out
}

func entriesFromWire(ws []*pb.SgEntry, now time.Time) ([]datastore.LogEntry, error) {
	out := make([]datastore.LogEntry, len(ws))
	for i, w := range ws {
		e, err := entryFromWire(w, now)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %v", i, err)
		}
		out[i] = e
	}
	return out, nil
}

func peerFromWire(b []byte) (peer.ID, error) {
	if len(b) == 0 {
		return "", errors.New("empty peer ID")
	}
	p, err := peer.IDFromBytes(b)
	if err != nil {
		return "", errors.New("invalid peer ID")
	}
	return p, nil
}

func roleFromWire(r uint32) (datastore.Role, error) {
	if r > math.MaxUint8 || !datastore.Role(r).Valid() { // no truncation to a valid role
		return 0, fmt.Errorf("invalid role %d", r)
	}
	return datastore.Role(r), nil
}

// addrsToWire converts the first MaxMemberAddrs of addrs; a host may listen
// on more, and a peer would refuse them all.
func addrsToWire(addrs []ma.Multiaddr) [][]byte {
	var out [][]byte
	for _, a := range addrs[:min(len(addrs), MaxMemberAddrs)] {
		out = append(out, a.Bytes())
	}
	return out
}

func addrsFromWire(bs [][]byte) ([]ma.Multiaddr, error) {
	if len(bs) > MaxMemberAddrs {
		return nil, fmt.Errorf("%d addresses; the most is %d", len(bs), MaxMemberAddrs)
	}
	var out []ma.Multiaddr
	for i, b := range bs {
		a, err := ma.NewMultiaddrBytes(b)
		if err != nil || len(a) == 0 {
			return nil, fmt.Errorf("address %d is not a multiaddr", i)
		}
		out = append(out, a)
	}
	return out, nil
}

// timeToWire gives 0 for the zero time (whose UnixNano is undefined).
func timeToWire(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// timeFromWire gives the zero time for n <= 0, and clamps times later than
// now to now: a peer cannot make its entries outrank ours by claiming the future.
func timeFromWire(n int64, now time.Time) time.Time {
	if n <= 0 {
		return time.Time{}
	}
	t := time.Unix(0, n)
	if t.After(now) {
		return now
	}
	return t
}
