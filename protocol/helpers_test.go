package protocol

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/p2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

// newHost starts a real libp2p host on 127.0.0.1 (TCP, or QUIC if quic).
func newHost(t testing.TB, quic bool) host.Host {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	addr := "/ip4/127.0.0.1/tcp/0"
	if quic {
		addr = "/ip4/127.0.0.1/udp/0/quic-v1"
	}
	h, err := p2p.New(key, p2p.ListenAddrs(ma.StringCast(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// introduce tells a where b listens.
func introduce(a, b host.Host) {
	a.Peerstore().AddAddrs(b.ID(), b.Addrs(), peerstore.PermanentAddrTTL)
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func newStore(t testing.TB) *datastore.BlobStore {
	t.Helper()
	s, err := datastore.OpenBlobStore(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testPolicy serves the refs marked public and tells every caller the same
// signposts.
type testPolicy struct {
	mu        sync.Mutex
	public    map[datastore.Ref]bool
	signposts map[datastore.Ref]datastore.Signpost
	offers    map[datastore.Ref]map[string]int32
	accepts   []accept
	keeping   bool
}

func (p *testPolicy) MayServe(_ context.Context, _ peer.ID, ref datastore.Ref) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.public[ref], nil
}

func (p *testPolicy) Offer(_ context.Context, _ peer.ID, ref datastore.Ref, _ map[string]uint32) (map[string]int32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.offers[ref], nil
}

func (p *testPolicy) Accepted(_ context.Context, caller peer.ID, ref datastore.Ref, taken map[string]int32, _ map[string]uint32) (map[string]int32, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.accepts = append(p.accepts, accept{caller, ref, taken})
	granted := map[string]int32{}
	for sg, n := range taken {
		granted[sg] = min(n, p.offers[ref][sg])
	}
	return granted, p.keeping, nil
}

type accept struct {
	caller peer.ID
	ref    datastore.Ref
	taken  map[string]int32
}

func (p *testPolicy) VisibleSignpost(_ context.Context, _ peer.ID, ref datastore.Ref) (datastore.Signpost, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.signposts[ref], nil
}

// serving is a server peer with a store and a policy.
type serving struct {
	h      host.Host
	store  *datastore.BlobStore
	policy *testPolicy
	srv    *Server
}

func newServing(t testing.TB, quic bool, opts ...Option) *serving {
	t.Helper()
	s := &serving{h: newHost(t, quic), store: newStore(t), policy: &testPolicy{public: map[datastore.Ref]bool{}, signposts: map[datastore.Ref]datastore.Signpost{}}}
	srv, err := NewServer(s.h, s.store, s.policy, opts...)
	if err != nil {
		t.Fatal(err)
	}
	s.srv = srv
	t.Cleanup(func() { srv.Close() })
	return s
}

// put stores data, served to anyone if public.
func (s *serving) put(t testing.TB, data []byte, public bool) datastore.Ref {
	t.Helper()
	ref, _, err := s.store.Put(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	s.policy.mu.Lock()
	s.policy.public[ref] = public
	s.policy.mu.Unlock()
	return ref
}

// fetching is a client peer with a store.
type fetching struct {
	h      host.Host
	store  *datastore.BlobStore
	client *Client
}

func newFetching(t testing.TB, server host.Host, quic bool, opts ...Option) *fetching {
	t.Helper()
	f := &fetching{h: newHost(t, quic), store: newStore(t)}
	c, err := NewClient(f.h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	f.client = c
	t.Cleanup(func() { c.Close() })
	introduce(f.h, server)
	return f
}

func (f *fetching) held(t testing.TB, ref datastore.Ref) []byte {
	t.Helper()
	file, _, err := f.store.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(file); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func (f *fetching) partialSize(t testing.TB, ref datastore.Ref) int64 {
	t.Helper()
	parts, err := f.store.Partials()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if p.Ref == ref {
			return p.Size
		}
	}
	return -1
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

// fetch fetches ref from p into f's store and returns its size.
func (f *fetching) fetch(ctx context.Context, p peer.ID, ref datastore.Ref, progress Progress) (int64, error) {
	got, err := f.client.Fetch(ctx, p, ref, f.store, GetOptions{Progress: progress})
	return got.Size, err
}

// getBlob gets ref from p at offset into w: the blob's size, bytes written.
func (f *fetching) getBlob(ctx context.Context, p peer.ID, ref datastore.Ref, offset int64, w io.Writer) (int64, int64, error) {
	got, err := f.client.GetBlob(ctx, p, ref, offset, w, GetOptions{})
	return got.Size, got.Written, err
}
