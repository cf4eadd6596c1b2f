package p2p

import (
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

const limitedID protocol.ID = "/test/limited/1.0.0"

func TestWithProtocolLimitCapsInboundStreamsPerPeer(t *testing.T) {
	server, _ := newTestHost(t, WithProtocolLimit(limitedID, ProtocolLimit{
		InboundStreamsPerPeer: 2,
		InboundStreams:        4,
		MemoryPerPeer:         1 << 20,
		Memory:                4 << 20,
	}))
	client, _ := newTestHost(t)

	var entered atomic.Int32
	release := make(chan struct{})
	// Registered after the hosts, so it runs before they close.
	t.Cleanup(func() { close(release) })
	server.SetStreamHandler(limitedID, func(s network.Stream) {
		entered.Add(1)
		<-release
		s.Reset()
	})

	if err := client.Connect(t.Context(), peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		t.Fatal(err)
	}
	open := func() network.Stream {
		t.Helper()
		s, err := client.NewStream(t.Context(), server.ID(), limitedID)
		if err != nil {
			t.Fatalf("open stream: %v", err)
		}
		t.Cleanup(func() { s.Reset() })
		// NewStream may negotiate lazily; the write makes the server see it.
		if _, err := s.Write([]byte{1}); err != nil {
			t.Fatalf("write: %v", err)
		}
		return s
	}

	// The first two streams reach the handler, which holds them open.
	open()
	open()
	deadline := time.Now().Add(10 * time.Second)
	for entered.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("handler entered %d times, want 2", entered.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The third exceeds InboundStreamsPerPeer: the server resets it
	// before the handler runs. The handler never writes, so a read that
	// merely times out would mean the stream was accepted.
	third := open()
	if err := third.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := third.Read(make([]byte, 1))
	if err == nil {
		t.Fatalf("third stream read %d bytes, want a reset", n)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("third stream was not reset (read timed out; handler entered %d times)", entered.Load())
	}
	if !errors.Is(err, network.ErrReset) {
		t.Fatalf("third stream read error = %v, want a reset", err)
	}
	var se *network.StreamError
	if !errors.As(err, &se) || !se.Remote || se.ErrorCode != network.StreamResourceLimitExceeded {
		t.Errorf("third stream read error = %v, want a remote reset with StreamResourceLimitExceeded", err)
	}
	if got := entered.Load(); got != 2 {
		t.Fatalf("handler entered %d times, want 2", got)
	}
}
