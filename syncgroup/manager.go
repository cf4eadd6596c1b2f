// Package syncgroup keeps this peer's syncgroups: their specs, members and
// roles, ACL checks, and the exchange of announcement logs (BlobRefs and
// membership) with the other members.
package syncgroup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Errors of this package; test them with errors.Is. The protocol's errors
// (protocol.ErrUnknownSyncgroup, ErrNotMember, ErrJoinRefused) are used where
// they apply, so they reach a remote caller unchanged.
var (
	// ErrExists: creating a syncgroup this peer already belongs to.
	ErrExists = errors.New("syncgroup already exists here")
)

// Transport is how a Manager reaches other members; protocol.SgClient is one.
type Transport interface {
	Join(ctx context.Context, p peer.ID, id string, role datastore.Role, addrs []ma.Multiaddr) (datastore.Spec, error)
	Pull(ctx context.Context, p peer.ID, id string, since map[peer.ID]uint64, limit int) ([]datastore.LogEntry, bool, error)
	Announce(ctx context.Context, p peer.ID, id string, entries []datastore.LogEntry) (int, error)
}

// Store is what a Manager keeps; datastore.MetaStore is one.
type Store interface {
	Groups(ctx context.Context) ([]datastore.Group, error)
	Watermarks(ctx context.Context, id string) (map[peer.ID]uint64, error)
	LogEntries(ctx context.Context, id string, origin peer.ID, after uint64, limit int) ([]datastore.LogEntry, error)
	ApplyGroupChange(ctx context.Context, id string, ch datastore.GroupChange) ([]datastore.Ref, error)
}

// Config is what a Manager needs besides its store and transport.
type Config struct {
	Self  peer.ID
	Addrs func() []ma.Multiaddr // this peer's current listen addresses
	// Serve starts answering a syncgroup's protocol (protocol.SgServer.Serve).
	Serve func(id string)
	// Learned is told the addresses of members as they become known (for the peerstore).
	Learned func(m datastore.Member)
	// Changed is told which signposts an applied change altered. Optional.
	Changed func(id string, refs []datastore.Ref)
	Now     func() time.Time // default time.Now
	Log     *slog.Logger     // default slog.Default()
	// PushTimeout bounds one push of new entries to one member (default 5 s).
	PushTimeout time.Duration
}

// Manager keeps this peer's syncgroups. It is safe for concurrent use.
type Manager struct {
	cfg   Config
	store Store
	tr    Transport

	ctx    context.Context // ends at Close; bounds background pushes and pulls
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	groups map[string]*group
	// pulling holds the pulls in flight, so one peer is not pulled twice at
	// once; true if another was asked for meanwhile (it follows at once).
	pulling map[pullKey]bool
}

type pullKey struct {
	id string
	p  peer.ID
}

// group is one syncgroup's state; mu serialises its changes.
type group struct {
	mu  sync.Mutex
	rec datastore.Group
	wm  map[peer.ID]uint64 // origin → highest Seq held

	// myRole is rec.MyRole+1 once stored (0 before), for MyRole, asked once
	// or twice per blob fetched, which must not wait for mu: a pull holds it
	// while it writes.
	myRole atomic.Uint32
}

// setMyRole records that role is stored as this peer's; the caller holds mu.
func (g *group) setMyRole(role datastore.Role) { g.myRole.Store(uint32(role) + 1) }

// New returns a Manager over store and tr with every stored syncgroup loaded;
// Start makes it take part in them.
func New(ctx context.Context, store Store, tr Transport, cfg Config) (*Manager, error) {
	if cfg.Self == "" || cfg.Addrs == nil || cfg.Serve == nil {
		return nil, errors.New("syncgroup: Config needs Self, Addrs and Serve")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Learned == nil {
		cfg.Learned = func(datastore.Member) {}
	}
	if cfg.Changed == nil {
		cfg.Changed = func(string, []datastore.Ref) {}
	}
	if cfg.PushTimeout <= 0 {
		cfg.PushTimeout = 5 * time.Second
	}
	m := &Manager{cfg: cfg, store: store, tr: tr, groups: map[string]*group{}, pulling: map[pullKey]bool{}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	recs, err := store.Groups(ctx)
	if err != nil {
		return nil, fmt.Errorf("syncgroup: loading: %w", err)
	}
	for _, rec := range recs {
		wm, err := store.Watermarks(ctx, rec.Spec.ID)
		if err != nil {
			return nil, fmt.Errorf("syncgroup %s: loading: %w", rec.Spec.ID, err)
		}
		g := &group{rec: rec, wm: wm}
		g.setMyRole(rec.MyRole)
		m.groups[rec.Spec.ID] = g
		for _, mb := range rec.Members {
			cfg.Learned(mb)
		}
	}
	return m, nil
}

// Start begins taking part in the stored syncgroups: it serves their
// protocols, announces this peer's current addresses where they changed, and
// pulls from the other members in the background.
func (m *Manager) Start(ctx context.Context) error {
	for _, rec := range m.Groups() {
		m.cfg.Serve(rec.Spec.ID)
	}
	if err := m.Refresh(ctx); err != nil {
		return err
	}
	m.SyncAll()
	return nil
}

// Close stops background pushes and pulls and waits for them.
func (m *Manager) Close() error {
	m.mu.Lock() // under mu, so background starts no new work once Wait has begun
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}

// background runs fn on its own goroutine unless the Manager is closed.
func (m *Manager) background(fn func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx.Err() == nil {
		m.wg.Go(fn)
	}
}

func (m *Manager) group(id string) (*group, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.groups[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", protocol.ErrUnknownSyncgroup, id)
	}
	return g, nil
}

// Group returns a copy of syncgroup id's record.
func (m *Manager) Group(id string) (datastore.Group, error) {
	g, err := m.group(id)
	if err != nil {
		return datastore.Group{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rec.Clone(), nil
}

// Groups returns copies of every syncgroup's record, sorted by ID.
func (m *Manager) Groups() []datastore.Group {
	m.mu.Lock()
	gs := make([]*group, 0, len(m.groups))
	for _, g := range m.groups {
		gs = append(gs, g)
	}
	m.mu.Unlock()
	out := make([]datastore.Group, 0, len(gs))
	for _, g := range gs {
		g.mu.Lock()
		out = append(out, g.rec.Clone())
		g.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b datastore.Group) int { return cmp.Compare(a.Spec.ID, b.Spec.ID) })
	return out
}

// Role returns p's role in syncgroup id, if p is a member.
func (m *Manager) Role(id string, p peer.ID) (datastore.Role, bool) {
	g, err := m.group(id)
	if err != nil {
		return 0, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	mb, ok := g.rec.Member(p)
	return mb.Role, ok
}

// MyRole returns this peer's role in syncgroup id, as it joined or created it.
func (m *Manager) MyRole(id string) (datastore.Role, bool) {
	g, err := m.group(id)
	if err != nil {
		return 0, false
	}
	if r := g.myRole.Load(); r > 0 {
		return datastore.Role(r - 1), true
	}
	g.mu.Lock() // being created or joined
	defer g.mu.Unlock()
	return g.rec.MyRole, true
}

// IsMember reports whether p is a member of syncgroup id (this peer belongs to it).
func (m *Manager) IsMember(id string, p peer.ID) bool {
	_, ok := m.Role(id, p)
	return ok
}

// Watermarks returns a copy of how far this peer holds each origin's entries of id.
func (m *Manager) Watermarks(id string) (map[peer.ID]uint64, error) {
	g, err := m.group(id)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return cloneMap(g.wm), nil
}

// Create creates syncgroup id with this peer as creator and first member.
func (m *Manager) Create(ctx context.Context, id string, acl datastore.ACL, role datastore.Role) (datastore.Group, error) {
	if err := datastore.CheckSyncgroupID(id); err != nil {
		return datastore.Group{}, err
	}
	if !role.Valid() {
		return datastore.Group{}, fmt.Errorf("syncgroup %s: invalid role %v", id, role)
	}
	m.mu.Lock()
	if _, ok := m.groups[id]; ok {
		m.mu.Unlock()
		return datastore.Group{}, fmt.Errorf("%w: %s", ErrExists, id)
	}
	g := &group{wm: map[peer.ID]uint64{}}
	g.mu.Lock() // held until stored: nobody sees the group half made
	m.groups[id] = g
	m.mu.Unlock()
	defer g.mu.Unlock()

	now := m.cfg.Now()
	rec := datastore.Group{Spec: datastore.Spec{ID: id, Creator: m.cfg.Self, ACL: acl, Created: now}, MyRole: role}
	self := datastore.Member{Peer: m.cfg.Self, Role: role, Addrs: m.cfg.Addrs(), Since: now}
	entry := datastore.LogEntry{Origin: m.cfg.Self, Seq: 1, Time: now, Member: &self}
	rec.SetMember(self)
	ch := datastore.GroupChange{Group: &rec, Entries: []datastore.LogEntry{entry}, Watermarks: map[peer.ID]uint64{m.cfg.Self: 1}}
	if _, err := m.store.ApplyGroupChange(ctx, id, ch); err != nil {
		m.mu.Lock()
		delete(m.groups, id)
		m.mu.Unlock()
		return datastore.Group{}, err
	}
	g.rec, g.wm = rec, map[peer.ID]uint64{m.cfg.Self: 1}
	g.setMyRole(role)
	m.cfg.Serve(id)
	return rec.Clone(), nil
}

// Join joins syncgroup id through via, a member, with role, then pulls the
// group's log from via. Joining a group again changes only the role.
func (m *Manager) Join(ctx context.Context, id string, via peer.ID, role datastore.Role) (datastore.Group, error) {
	if err := datastore.CheckSyncgroupID(id); err != nil {
		return datastore.Group{}, err
	}
	if !role.Valid() {
		return datastore.Group{}, fmt.Errorf("syncgroup %s: invalid role %v", id, role)
	}
	if via == m.cfg.Self {
		return datastore.Group{}, fmt.Errorf("syncgroup %s: cannot join through this peer itself", id)
	}
	spec, err := m.tr.Join(ctx, via, id, role, m.cfg.Addrs())
	if err != nil {
		return datastore.Group{}, err
	}
	if spec.ID != id {
		return datastore.Group{}, fmt.Errorf("syncgroup %s: %s answered for %q: %w", id, via, spec.ID, protocol.ErrProtocol)
	}

	m.mu.Lock()
	g, existed := m.groups[id]
	if !existed {
		g = &group{wm: map[peer.ID]uint64{}, rec: datastore.Group{Spec: spec}}
		// Until its own entry arrives, via stands as a member: we chose to trust it.
		g.rec.SetMember(datastore.Member{Peer: via})
		m.groups[id] = g
	}
	m.mu.Unlock()

	g.mu.Lock()
	rec := g.rec.Clone()
	rec.MyRole = role
	_, err = m.store.ApplyGroupChange(ctx, id, datastore.GroupChange{Group: &rec})
	if err == nil {
		g.rec = rec
		g.setMyRole(role)
	}
	g.mu.Unlock()
	if err != nil {
		if !existed {
			m.mu.Lock()
			delete(m.groups, id)
			m.mu.Unlock()
		}
		return datastore.Group{}, err
	}
	if !existed {
		m.cfg.Serve(id)
	}
	if err := m.PullFrom(ctx, via, id); err != nil {
		m.cfg.Log.Warn("syncgroup: joined, but the first pull failed; it will be retried", "sg", id, "via", via, "err", err)
	}
	return m.Group(id)
}

func cloneMap[K comparable, V any](in map[K]V) map[K]V {
	out := make(map[K]V, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}
