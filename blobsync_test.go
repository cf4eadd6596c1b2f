package blobsync

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/p2p"
	"github.com/blobsync/blobsync/protocol"
	ds "github.com/ipfs/go-datastore"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// newNode starts a Node on a real loopback host with leveldb in a temp dir,
// closed when the test ends.
func newNode(t testing.TB, opts ...Option) *Node {
	t.Helper()
	n, _, _ := newNodeParts(t, opts...)
	return n
}

// newNodeParts is newNode, also returning the datastore and the blob
// directory, for a test that starts another Node on them (a restart).
func newNodeParts(t testing.TB, opts ...Option) (*Node, ds.Batching, string) {
	t.Helper()
	h := newHost(t)
	dir := t.TempDir()
	d, err := leveldb.NewDatastore(filepath.Join(dir, "datastore"), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(h, d, filepath.Join(dir, "blobs"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		h.Close()
		d.Close()
	})
	return n, d, filepath.Join(dir, "blobs")
}

// newHost starts a host with a new identity on loopback TCP. The caller closes it.
func newHost(t testing.TB) host.Host {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := p2p.New(key, p2p.ListenAddrs(ma.StringCast("/ip4/127.0.0.1/tcp/0")))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// idle reports whether n's fetcher has nothing pending or in flight and no
// transfer is still acknowledging or recording its blob behind it.
func idle(n *Node) bool {
	q := n.FetchQueue(0)
	n.flightsMu.Lock()
	defer n.flightsMu.Unlock()
	return q.Pending == 0 && q.InFlight == 0 && len(n.flights) == 0
}

func addrInfo(n *Node) peer.AddrInfo { return peer.AddrInfo{ID: n.h.ID(), Addrs: n.h.Addrs()} }

func random(t *testing.T, size int) []byte {
	b := make([]byte, size)
	rand.Read(b)
	return b
}

func readAll(t *testing.T, n *Node, ref Ref) []byte {
	t.Helper()
	f, _, err := n.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPutThenFetchFromPeer(t *testing.T) {
	a, b := newNode(t), newNode(t)
	data := random(t, 3<<20)
	ref, size, err := a.Put(t.Context(), bytes.NewReader(data), PutOptions{Public: true})
	if err != nil || size != int64(len(data)) || ref != datastore.RefOf(data) {
		t.Fatalf("Put = %s, %d, %v", ref, size, err)
	}
	got, err := b.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(a)}})
	if err != nil || got != size {
		t.Fatalf("Fetch = %d, %v", got, err)
	}
	if !bytes.Equal(readAll(t, b, ref), data) {
		t.Fatal("fetched bytes differ")
	}
	list, err := b.List(t.Context())
	if err != nil || len(list) != 1 || list[0].Ref != ref || list[0].Size != size || list[0].Public || list[0].Created.IsZero() {
		t.Fatalf("List on fetcher = %+v, %v", list, err)
	}
	if s := a.Stats(); s.BytesSent != size || s.BlobsServed != 1 {
		t.Fatalf("server stats %+v", s)
	}
	// Held now: a second Fetch needs no peer.
	if got, err := b.Fetch(t.Context(), ref, FetchOptions{}); err != nil || got != size {
		t.Fatalf("Fetch of a held blob = %d, %v", got, err)
	}
	if b.Stats().BytesReceived != size {
		t.Fatal("a held blob was fetched again")
	}
}

func TestPrivateBlobIsNotServed(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ref, _, err := a.Put(t.Context(), bytes.NewReader(random(t, 1000)), PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(a)}})
	if !errors.Is(err, protocol.ErrNotFound) {
		t.Fatalf("Fetch of a private blob: %v, want ErrNotFound", err)
	}
	if _, ok, _ := b.Has(ref); ok {
		t.Fatal("private blob reached the other peer")
	}
	// Putting it again as public publishes it; putting it again plain keeps it public.
	a.Put(t.Context(), bytes.NewReader(readAll(t, a, ref)), PutOptions{Public: true})
	a.Put(t.Context(), bytes.NewReader(readAll(t, a, ref)), PutOptions{})
	if _, err := b.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(a)}}); err != nil {
		t.Fatalf("Fetch after publishing: %v", err)
	}
}

func TestFetchWithoutLocation(t *testing.T) {
	b := newNode(t)
	_, err := b.Fetch(t.Context(), datastore.RefOf([]byte("nowhere")), FetchOptions{})
	if !errors.Is(err, ErrNoLocation) {
		t.Fatalf("Fetch with no location: %v, want ErrNoLocation", err)
	}
}

func TestFetchTriesSignpostLocationsAfterFrom(t *testing.T) {
	a, b, empty := newNode(t), newNode(t), newNode(t)
	data := random(t, 100<<10)
	ref, _, _ := a.Put(t.Context(), bytes.NewReader(data), PutOptions{Public: true})
	b.h.Peerstore().AddAddrs(a.h.ID(), a.h.Addrs(), time.Hour)
	_, err := b.meta.UpdateSignpost(t.Context(), ref, func(sp *datastore.Signpost) bool {
		return sp.Merge(datastore.Signpost{Locations: []datastore.Location{{Peer: a.h.ID(), WhenSeen: time.Now()}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The peer given first does not have it; the signpost's location does.
	size, err := b.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(empty)}})
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Fetch = %d, %v", size, err)
	}
	if !bytes.Equal(readAll(t, b, ref), data) {
		t.Fatal("bytes differ")
	}
}

func TestCloseLeavesHostRunning(t *testing.T) {
	n := newNode(t)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if len(n.h.Addrs()) == 0 || n.h.Network().ListenAddresses() == nil {
		t.Fatal("host stopped with the node")
	}
	for _, p := range n.h.Mux().Protocols() {
		if p == protocol.ID {
			t.Fatal("blob protocol still registered after Close")
		}
	}
}
