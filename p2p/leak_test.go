package p2p

import (
	"crypto/rand"
	"fmt"
	"net"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives its tests. Exempt are
// three goroutines go-libp2p v0.51 itself leaves behind when libp2p.New fails
// to listen (its swarm and peerstore are never closed on that path); ours, the
// resource manager's and the connection manager's, are all checked.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/net/swarm.(*DialBackoff).background"),
		goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/net/swarm.(*connectionEventsEmitter).runEmitter"),
		goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem.(*memoryAddrBook).background"),
	)
}

// TestFailedNewLeavesNothingRunning: a host that cannot listen is an error,
// and its resource and connection managers are shut down (TestMain checks).
func TestFailedNewLeavesNothingRunning(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	for range 3 {
		h, err := New(key, ListenAddrs(ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))))
		if err == nil {
			h.Close()
			t.Fatal("New listened on a port already in use")
		}
	}
}
