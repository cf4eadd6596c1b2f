package protocol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/test"
	ma "github.com/multiformats/go-multiaddr"
)

const sgID = "/blobsync/sg/family"

// fakeGroups is a Syncgroups that records its calls and answers with what it
// is given. If block is set, every call waits for ctx to end or block to close.
type fakeGroups struct {
	mu    sync.Mutex
	calls map[string]int
	id    string
	from  peer.ID
	role  datastore.Role
	addrs []ma.Multiaddr
	since map[peer.ID]uint64
	limit int
	got   []datastore.LogEntry

	spec     datastore.Spec
	members  []datastore.Member
	entries  []datastore.LogEntry
	more     bool
	accepted int
	err      error
	block    chan struct{}
	entered  chan struct{} // receives once per blocked call
	ctxErr   error         // what a blocked call's context said
}

func (f *fakeGroups) record(ctx context.Context, op, id string, caller peer.ID) error {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[op]++
	f.id, f.from = id, caller
	block := f.block
	f.mu.Unlock()
	if block != nil {
		f.entered <- struct{}{}
		select {
		case <-ctx.Done():
			f.mu.Lock()
			f.ctxErr = ctx.Err()
			f.mu.Unlock()
			return ctx.Err()
		case <-block:
		}
	}
	return f.err
}

func (f *fakeGroups) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		n += c
	}
	return n
}

func (f *fakeGroups) HandleJoin(ctx context.Context, id string, caller peer.ID, role datastore.Role, addrs []ma.Multiaddr) (datastore.Spec, error) {
	err := f.record(ctx, "join", id, caller)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.role, f.addrs = role, addrs
	return f.spec, err
}

func (f *fakeGroups) HandleMembers(ctx context.Context, id string, caller peer.ID) ([]datastore.Member, error) {
	err := f.record(ctx, "members", id, caller)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.members, err
}

func (f *fakeGroups) HandlePull(ctx context.Context, id string, caller peer.ID, since map[peer.ID]uint64, limit int) ([]datastore.LogEntry, bool, error) {
	err := f.record(ctx, "pull", id, caller)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.since, f.limit = since, limit
	return f.entries, f.more, err
}

func (f *fakeGroups) HandleAnnounce(ctx context.Context, id string, caller peer.ID, entries []datastore.LogEntry) (int, error) {
	err := f.record(ctx, "announce", id, caller)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = entries
	return f.accepted, err
}

// sgPeers is a serving host and a calling host that knows its address.
type sgPeers struct {
	srvHost, cliHost host.Host
	fake             *fakeGroups
	srv              *SgServer
	cli              *SgClient
}

// newSgPeers starts both hosts; the server logs to nowhere unless opts say.
func newSgPeers(t *testing.T, opts ...Option) *sgPeers {
	t.Helper()
	opts = append([]Option{Logger(slog.New(slog.DiscardHandler))}, opts...)
	p := &sgPeers{srvHost: newHost(t, false), cliHost: newHost(t, false), fake: &fakeGroups{}}
	var err error
	if p.srv, err = NewSgServer(p.srvHost, p.fake, opts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.srv.Close() })
	p.srv.Serve(sgID)
	if p.cli, err = NewSgClient(p.cliHost, opts...); err != nil {
		t.Fatal(err)
	}
	introduce(p.cliHost, p.srvHost)
	return p
}

func randPeer(t testing.TB) peer.ID { return test.RandPeerIDFatal(t) }

func testMember(t testing.TB, role datastore.Role, naddrs int) datastore.Member {
	m := datastore.Member{Peer: randPeer(t), Role: role, Since: t0.Add(time.Duration(naddrs) * time.Second)}
	for i := range naddrs {
		m.Addrs = append(m.Addrs, ma.StringCast(fmt.Sprintf("/ip4/10.0.0.%d/tcp/%d", i+1, 4000+i)))
	}
	return m
}

func blobEntry(t testing.TB, origin peer.ID, seq uint64) datastore.LogEntry {
	ann := &datastore.BlobAnnouncement{Ref: datastore.RefOf(fmt.Appendf(nil, "blob %s %d", origin, seq)), Holder: randPeer(t)}
	return datastore.LogEntry{Origin: origin, Seq: seq, Time: t0.Add(time.Duration(seq) * time.Millisecond), Blob: ann}
}

func memberEntry(t testing.TB, origin peer.ID, seq uint64, m datastore.Member) datastore.LogEntry {
	return datastore.LogEntry{Origin: origin, Seq: seq, Time: t0, Member: &m}
}

func specsEqual(a, b datastore.Spec) bool {
	return a.ID == b.ID && a.Creator == b.Creator && a.ACL.Open == b.ACL.Open &&
		slices.Equal(a.ACL.Allow, b.ACL.Allow) && a.Created.Equal(b.Created)
}

func membersEqual(a, b datastore.Member) bool {
	return a.Peer == b.Peer && a.Role == b.Role && a.Since.Equal(b.Since) && slices.EqualFunc(a.Addrs, b.Addrs, ma.Multiaddr.Equal)
}

func entriesEqual(a, b []datastore.LogEntry) bool {
	return slices.EqualFunc(a, b, func(x, y datastore.LogEntry) bool {
		if x.Origin != y.Origin || x.Seq != y.Seq || !x.Time.Equal(y.Time) || (x.Blob == nil) != (y.Blob == nil) || (x.Member == nil) != (y.Member == nil) {
			return false
		}
		if x.Blob != nil && *x.Blob != *y.Blob {
			return false
		}
		return x.Member == nil || membersEqual(*x.Member, *y.Member)
	})
}

func TestSgJoinRoundTrip(t *testing.T) {
	p := newSgPeers(t)
	p.fake.spec = datastore.Spec{ID: sgID, Creator: randPeer(t), ACL: datastore.ACL{Allow: []peer.ID{randPeer(t), randPeer(t)}}, Created: t0}
	me := testMember(t, datastore.RoleServer, 2)
	spec, err := p.cli.Join(t.Context(), p.srvHost.ID(), sgID, datastore.RoleServer, me.Addrs)
	if err != nil {
		t.Fatal(err)
	}
	if !specsEqual(spec, p.fake.spec) {
		t.Fatalf("Join returned %+v, want %+v", spec, p.fake.spec)
	}
	f := p.fake
	if f.calls["join"] != 1 || f.id != sgID || f.from != p.cliHost.ID() || f.role != datastore.RoleServer || !slices.EqualFunc(f.addrs, me.Addrs, ma.Multiaddr.Equal) {
		t.Fatalf("server saw join %d× of %q from %s as %v at %v", f.calls["join"], f.id, f.from, f.role, f.addrs)
	}

	// An open spec; more addresses than a member may have are cut to the cap.
	p.fake.spec = datastore.Spec{ID: sgID, Creator: randPeer(t), ACL: datastore.ACL{Open: true}}
	many := testMember(t, datastore.RoleLeaf, MaxMemberAddrs+4)
	if spec, err = p.cli.Join(t.Context(), p.srvHost.ID(), sgID, datastore.RoleLeaf, many.Addrs); err != nil {
		t.Fatal(err)
	}
	if !specsEqual(spec, p.fake.spec) || !spec.Created.IsZero() {
		t.Fatalf("Join returned %+v, want %+v", spec, p.fake.spec)
	}
	if !slices.EqualFunc(f.addrs, many.Addrs[:MaxMemberAddrs], ma.Multiaddr.Equal) || f.role != datastore.RoleLeaf {
		t.Fatalf("server saw %d addresses as %v, want the first %d", len(f.addrs), f.role, MaxMemberAddrs)
	}
}

func TestSgMembersRoundTrip(t *testing.T) {
	p := newSgPeers(t)
	p.fake.members = []datastore.Member{testMember(t, datastore.RoleServer, 3), testMember(t, datastore.RoleNormal, 0), testMember(t, datastore.RoleLeaf, MaxMemberAddrs)}
	p.fake.members[1].Since = time.Time{}
	ms, err := p.cli.Members(t.Context(), p.srvHost.ID(), sgID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(ms, p.fake.members, membersEqual) {
		t.Fatalf("Members = %+v, want %+v", ms, p.fake.members)
	}
	if p.fake.calls["members"] != 1 || p.fake.from != p.cliHost.ID() {
		t.Fatalf("server saw %v from %s", p.fake.calls, p.fake.from)
	}
}

func TestSgPullRoundTrip(t *testing.T) {
	p := newSgPeers(t)
	a, b := randPeer(t), randPeer(t)
	p.fake.entries = []datastore.LogEntry{blobEntry(t, a, 4), blobEntry(t, a, 5), memberEntry(t, b, 1, testMember(t, datastore.RoleServer, 2))}
	p.fake.more = true
	since := map[peer.ID]uint64{a: 3, b: 0, randPeer(t): 9}
	for _, tc := range []struct{ limit, want int }{{0, MaxPullEntries}, {-1, MaxPullEntries}, {MaxPullEntries + 1, MaxPullEntries}, {7, 7}, {3, 3}} {
		es, more, err := p.cli.Pull(t.Context(), p.srvHost.ID(), sgID, since, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if !entriesEqual(es, p.fake.entries) || !more {
			t.Fatalf("Pull = %+v, %v; want %+v, true", es, more, p.fake.entries)
		}
		if p.fake.limit != tc.want {
			t.Fatalf("Pull with limit %d reached the server as %d, want %d", tc.limit, p.fake.limit, tc.want)
		}
	}
	wantSince := map[peer.ID]uint64{a: 3}
	for o, s := range since {
		if s > 0 {
			wantSince[o] = s
		}
	}
	if fmt.Sprint(p.fake.since) != fmt.Sprint(wantSince) {
		t.Fatalf("server saw since %v, want %v", p.fake.since, wantSince)
	}

	// A Syncgroups giving more than the limit is cut to it, and says more remain.
	p.fake.more = false
	es, more, err := p.cli.Pull(t.Context(), p.srvHost.ID(), sgID, nil, 2)
	if err != nil || !entriesEqual(es, p.fake.entries[:2]) || !more {
		t.Fatalf("Pull limit 2 = %d entries, %v, %v; want the first 2, more", len(es), more, err)
	}
	if es, more, err = p.cli.Pull(t.Context(), p.srvHost.ID(), sgID, nil, 0); err != nil || len(es) != 3 || more {
		t.Fatalf("Pull = %d entries, %v, %v; want 3, no more", len(es), more, err)
	}
}

func TestSgPullTooBigForAFrameIsCut(t *testing.T) {
	p := newSgPeers(t)
	origin := randPeer(t)
	long := "/dns4/" + strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + ".example/tcp/1"
	for i := range MaxPullEntries {
		m := testMember(t, datastore.RoleNormal, 0)
		for range MaxMemberAddrs {
			m.Addrs = append(m.Addrs, ma.StringCast(long))
		}
		p.fake.entries = append(p.fake.entries, memberEntry(t, origin, uint64(i+1), m))
	}
	es, more, err := p.cli.Pull(t.Context(), p.srvHost.ID(), sgID, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) == 0 || len(es) >= MaxPullEntries || !more || !entriesEqual(es, p.fake.entries[:len(es)]) {
		t.Fatalf("Pull of an oversized answer = %d entries, more %v; want a prefix of %d, more", len(es), more, MaxPullEntries)
	}
}

func TestSgAnnounceRoundTrip(t *testing.T) {
	p := newSgPeers(t)
	origin := randPeer(t)
	// A full announce of member entries is a frame above 64 KiB: reserved, then read.
	var entries []datastore.LogEntry
	for i := range MaxAnnounceEntries {
		if i%2 == 0 {
			entries = append(entries, blobEntry(t, origin, uint64(i+1)))
		} else {
			entries = append(entries, memberEntry(t, origin, uint64(i+1), testMember(t, datastore.RoleLeaf, MaxMemberAddrs)))
		}
	}
	p.fake.accepted = 17
	n, err := p.cli.Announce(t.Context(), p.srvHost.ID(), sgID, entries)
	if err != nil {
		t.Fatal(err)
	}
	if n != 17 || p.fake.calls["announce"] != 1 || p.fake.from != p.cliHost.ID() || !entriesEqual(p.fake.got, entries) {
		t.Fatalf("Announce = %d; server saw %d calls, %d entries from %s", n, p.fake.calls["announce"], len(p.fake.got), p.fake.from)
	}
	// A Syncgroups claiming more than was sent is capped at what was sent.
	p.fake.accepted = 5
	if n, err = p.cli.Announce(t.Context(), p.srvHost.ID(), sgID, entries[:2]); err != nil || n != 2 {
		t.Fatalf("Announce = %d, %v; want 2", n, err)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestSgErrorsMapToKinds(t *testing.T) {
	var logs syncBuffer
	p := newSgPeers(t, Logger(slog.New(slog.NewTextHandler(&logs, nil))))
	for _, kind := range []error{ErrUnknownSyncgroup, ErrNotMember, ErrJoinRefused, ErrBadRequest} {
		p.fake.err = fmt.Errorf("detail \x1b[2J: %w", kind)
		calls := map[string]func() error{
			"join":     func() error { _, err := p.cli.Join(t.Context(), p.srvHost.ID(), sgID, 0, nil); return err },
			"members":  func() error { _, err := p.cli.Members(t.Context(), p.srvHost.ID(), sgID); return err },
			"pull":     func() error { _, _, err := p.cli.Pull(t.Context(), p.srvHost.ID(), sgID, nil, 0); return err },
			"announce": func() error { _, err := p.cli.Announce(t.Context(), p.srvHost.ID(), sgID, nil); return err },
		}
		for op, call := range calls {
			err := call()
			if !errors.Is(err, kind) || !strings.Contains(err.Error(), p.srvHost.ID().String()) {
				t.Fatalf("%s with %v: %v, want it naming %s", op, kind, err, p.srvHost.ID())
			}
			if strings.ContainsRune(err.Error(), 0x1b) {
				t.Fatalf("peer's control characters reached the error: %q", err)
			}
		}
	}
	p.fake.err = errors.New("disk /secret/path failed")
	_, err := p.cli.Members(t.Context(), p.srvHost.ID(), sgID)
	if !errors.Is(err, ErrRemote) || strings.Contains(err.Error(), "secret") {
		t.Fatalf("plain error: %v, want ErrRemote without the detail", err)
	}
	if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "/secret/path") {
		t.Fatalf("the detail was not logged at Warn: %q", l)
	}
	// The join's spec must be the group's own.
	p.fake.err, p.fake.spec = nil, datastore.Spec{ID: "/blobsync/sg/other", Creator: randPeer(t)}
	if _, err := p.cli.Join(t.Context(), p.srvHost.ID(), sgID, 0, nil); !errors.Is(err, ErrRemote) {
		t.Fatalf("spec of another group: %v, want ErrRemote", err)
	}
}

func TestSgUnservedSyncgroup(t *testing.T) {
	p := newSgPeers(t)
	if _, err := p.cli.Members(t.Context(), p.srvHost.ID(), "/blobsync/sg/elsewhere"); !errors.Is(err, ErrUnknownSyncgroup) {
		t.Fatalf("unserved group: %v, want ErrUnknownSyncgroup", err)
	}
	if _, err := p.cli.Members(t.Context(), p.srvHost.ID(), sgID); err != nil {
		t.Fatal(err)
	}
	p.srv.Stop(sgID)
	if _, err := p.cli.Members(t.Context(), p.srvHost.ID(), sgID); !errors.Is(err, ErrUnknownSyncgroup) {
		t.Fatalf("after Stop: %v, want ErrUnknownSyncgroup", err)
	}
	// Also when the peerstore still believes the peer speaks it (lazy negotiation).
	if err := p.cliHost.Peerstore().AddProtocols(p.srvHost.ID(), protocol.ID(sgID)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.cli.Pull(t.Context(), p.srvHost.ID(), sgID, nil, 0); !errors.Is(err, ErrUnknownSyncgroup) {
		t.Fatalf("after Stop, lazily negotiated: %v, want ErrUnknownSyncgroup", err)
	}
	p.srv.Serve(sgID)
	p.srv.Serve(sgID) // idempotent
	if _, err := p.cli.Members(t.Context(), p.srvHost.ID(), sgID); err != nil {
		t.Fatalf("served again: %v", err)
	}
	if n := p.fake.count(); n != 2 {
		t.Fatalf("Syncgroups called %d times, want 2", n)
	}
}

func TestSgBadIDsAreNeverUsed(t *testing.T) {
	p := newSgPeers(t)
	for _, id := range []string{string(ID), "/blobsync/sg/", "/blobsync/sg/a/b", "family"} {
		if _, err := p.cli.Members(t.Context(), p.srvHost.ID(), id); !errors.Is(err, datastore.ErrBadSyncgroupID) {
			t.Fatalf("Members(%q): %v, want ErrBadSyncgroupID", id, err)
		}
		p.srv.Serve(id)
		if p.srv.serving(id) {
			t.Fatalf("Serve(%q) serves it", id)
		}
	}
	if n := p.fake.count(); n != 0 {
		t.Fatalf("Syncgroups called %d times", n)
	}
}

func TestSgCloseResetsInFlightHandlers(t *testing.T) {
	p := newSgPeers(t)
	p.fake.block, p.fake.entered = make(chan struct{}), make(chan struct{}, 1)
	defer close(p.fake.block)
	errc := make(chan error, 1)
	go func() { _, err := p.cli.Members(t.Context(), p.srvHost.ID(), sgID); errc <- err }()
	select {
	case <-p.fake.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler never ran")
	}
	closed := make(chan error, 1)
	go func() { closed <- p.srv.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return while a handler was blocked")
	}
	if err := <-errc; err == nil {
		t.Fatal("call answered by a closed server succeeded")
	}
	p.fake.mu.Lock()
	ctxErr := p.fake.ctxErr
	p.fake.mu.Unlock()
	if !errors.Is(ctxErr, context.Canceled) {
		t.Fatalf("the blocked call's context ended with %v, want context.Canceled", ctxErr)
	}
	p.srv.Serve(sgID) // a no-op after Close
	if slices.Contains(p.srvHost.Mux().Protocols(), protocol.ID(sgID)) {
		t.Fatal("handler registered after Close")
	}
}

// TestSgServedIDsAreNotAdvertised: the host lists only the syncgroup prefix,
// so identify does not tell every connected peer which groups this one is in.
func TestSgServedIDsAreNotAdvertised(t *testing.T) {
	p := newSgPeers(t)
	p.srv.Serve("/blobsync/sg/secret-club")
	protos := p.srvHost.Mux().Protocols()
	for _, id := range []string{sgID, "/blobsync/sg/secret-club"} {
		if slices.Contains(protos, protocol.ID(id)) {
			t.Fatalf("%s is advertised: %v", id, protos)
		}
	}
	if !slices.Contains(protos, sgPrefixID) {
		t.Fatalf("the syncgroup prefix is not registered: %v", protos)
	}
	if _, err := p.cli.Members(t.Context(), p.srvHost.ID(), "/blobsync/sg/secret-club"); err != nil {
		t.Fatalf("a served group behind the prefix handler: %v", err)
	}
}
