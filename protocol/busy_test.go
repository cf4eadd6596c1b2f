package protocol

import (
	"crypto/rand"
	"errors"
	"testing"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/p2p"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
)

// TestResourceLimitIsBusyNotAViolation: a peer whose resource manager refuses
// a stream is busy, not misbehaving (review finding: it read as a protocol
// violation, and counted so in the metrics).
func TestResourceLimitIsBusyNotAViolation(t *testing.T) {
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	h, err := p2p.New(key, p2p.ListenAddrs(ma.StringCast("/ip4/127.0.0.1/tcp/0")),
		p2p.WithProtocolLimit(ID, p2p.ProtocolLimit{InboundStreamsPerPeer: 1, InboundStreams: 1, MemoryPerPeer: 1 << 20, Memory: 1 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	held, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	fakeServer(t, h, func(st network.Stream, _ *pb.Request) {
		close(held)
		<-release // holds the one stream allowed
		st.Reset()
	})
	b := newFetching(t, h, false)
	ref := datastore.RefOf([]byte("x"))
	go b.client.HaveBlob(t.Context(), h.ID(), ref)
	<-held
	_, err = b.client.HaveBlob(t.Context(), h.ID(), ref)
	if !errors.Is(err, ErrBusy) || errors.Is(err, ErrProtocol) {
		t.Fatalf("a stream refused for resource limits: %v; want ErrBusy, not ErrProtocol", err)
	}
}
