package p2p

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

func TestRendezvousKey(t *testing.T) {
	a, err := RendezvousKey("/blobsync/sg/family")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := RendezvousKey("/blobsync/sg/family")
	other, _ := RendezvousKey("/blobsync/sg/friends")
	if !a.Equals(again) || a.Equals(other) {
		t.Fatalf("keys: %s, %s, %s", a, again, other)
	}
	// Never a BlobRef: not even the BlobRef of the very same string.
	if a.Equals(datastore.RefOf([]byte("/blobsync/sg/family")).CID()) {
		t.Fatal("a rendezvous key equals a BlobRef")
	}
	if _, err := datastore.RefFromBytes(a.Bytes()); err == nil {
		t.Fatal("a rendezvous key parses as a BlobRef")
	}
	if _, err := RendezvousKey("family"); !errors.Is(err, datastore.ErrBadSyncgroupID) {
		t.Fatalf("a malformed ID: %v", err)
	}
	// Pinned: changing the derivation splits the network's rendezvous.
	if got := a.String(); got != "bafkreiarlgqcnpknd4qg3obd2wpx3wdzbqife6haxxszdv5zdpjjprcttu" {
		t.Fatalf("the derivation changed: %s", got)
	}
}

func dhtHost(t *testing.T) host.Host {
	t.Helper()
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	h, err := New(key, ListenAddrs(ma.StringCast("/ip4/127.0.0.1/tcp/0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func startDHT(t *testing.T, h host.Host, server bool, boot ...host.Host) *DHT {
	t.Helper()
	var peers []peer.AddrInfo
	for _, b := range boot {
		peers = append(peers, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()})
		if err := h.Connect(t.Context(), peers[len(peers)-1]); err != nil {
			t.Fatal(err)
		}
	}
	d, err := NewDHT(t.Context(), h, server, peers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	// A bootstrap server enters the routing table once identify says it speaks the DHT.
	for deadline := time.Now().Add(10 * time.Second); len(boot) > 0 && d.RoutingTableSize() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the bootstrap node never entered the routing table")
		}
		time.Sleep(time.Millisecond)
	}
	return d
}

// TestRoutedHostFindsPeersByID: a peer whose addresses the peerstore lacks is
// found through the DHT (FindPeer) when dialed by ID alone.
func TestRoutedHostFindsPeersByID(t *testing.T) {
	boot, a, c := dhtHost(t), dhtHost(t), dhtHost(t)
	startDHT(t, boot, true)
	da := startDHT(t, a, false, boot)
	startDHT(t, c, false, boot)
	c.SetStreamHandler("/test/echo/1.0.0", func(s network.Stream) { s.Write([]byte("hi")); s.Close() })
	// The bootstrap node answers FindPeer with the addresses identify gave it.
	deadline := time.Now().Add(10 * time.Second)
	for !hasAddr(boot, c.ID(), c.Addrs()[0]) {
		if time.Now().After(deadline) {
			t.Fatal("the bootstrap node never learned c's address")
		}
		time.Sleep(time.Millisecond)
	}
	if len(a.Peerstore().Addrs(c.ID())) != 0 {
		t.Fatal("a already knows where c is")
	}
	routed := da.Routed(a)
	s, err := routed.NewStream(t.Context(), c.ID(), "/test/echo/1.0.0")
	if err != nil {
		t.Fatalf("dialing c by ID through the routed host: %v", err)
	}
	defer s.Close()
	buf := make([]byte, 2)
	if _, err := s.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if len(a.Peerstore().Addrs(c.ID())) == 0 {
		t.Fatal("FindPeer's answer did not reach the peerstore")
	}
}

func TestProvideAndFindProviders(t *testing.T) {
	boot, a, b := dhtHost(t), dhtHost(t), dhtHost(t)
	startDHT(t, boot, true)
	da := startDHT(t, a, false, boot)
	db := startDHT(t, b, false, boot)
	key, _ := RendezvousKey("/blobsync/sg/x")
	if err := da.Provide(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	// The DHT is eventually consistent: the record lands in the server's
	// provider store a moment after Provide returns.
	var provs []peer.AddrInfo
	var err error
	for deadline := time.Now().Add(10 * time.Second); len(provs) == 0 && time.Now().Before(deadline); {
		provs, err = db.FindProviders(t.Context(), key, 8)
		time.Sleep(time.Millisecond)
	}
	if err != nil || len(provs) != 1 || provs[0].ID != a.ID() {
		t.Fatalf("providers of the key: %v, %v", provs, err)
	}
	// Nobody provides this one: the search ends, empty, well before its deadline.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	provs, err = db.FindProviders(ctx, datastore.RefOf([]byte("nobody")).CID(), 8)
	if err != nil || len(provs) != 0 || ctx.Err() != nil {
		t.Fatalf("providers of an unprovided key: %v, %v (ctx %v)", provs, err, ctx.Err())
	}
}

// TestProviderSearchIsBounded: collection stops at the limit, or at the
// deadline with what it has, and leaves nothing running (TestMain checks).
func TestProviderSearchIsBounded(t *testing.T) {
	endless, stop, stopped := make(chan peer.AddrInfo), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for i := 0; ; i++ {
			select {
			case endless <- peer.AddrInfo{ID: peer.ID(rune('a' + i%26))}:
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); <-stopped }()
	got, err := collectProviders(t.Context(), endless, 3)
	if err != nil || len(got) != 3 {
		t.Fatalf("limit 3: %d providers, %v", len(got), err)
	}

	silent := make(chan peer.AddrInfo) // a search that finds nothing and never ends
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if got, err := collectProviders(ctx, silent, 3); !errors.Is(err, context.DeadlineExceeded) || len(got) != 0 {
		t.Fatalf("a silent search: %v, %v", got, err)
	}

	slow := make(chan peer.AddrInfo, 1)
	slow <- peer.AddrInfo{ID: "only"}
	ctx2, cancel2 := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel2()
	if got, err := collectProviders(ctx2, slow, 3); err != nil || len(got) != 1 {
		t.Fatalf("a search cut short: %v, %v; want the one found and no error", got, err)
	}
}

func hasAddr(h host.Host, p peer.ID, a ma.Multiaddr) bool {
	for _, x := range h.Peerstore().Addrs(p) {
		if x.Equal(a) {
			return true
		}
	}
	return false
}
