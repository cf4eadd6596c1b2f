package p2p

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// loopback listens on 127.0.0.1 over both transports, ports chosen by the system.
var loopback = ListenAddrs(
	ma.StringCast("/ip4/127.0.0.1/tcp/0"),
	ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1"),
)

// newTestHost starts a host on loopback with a fresh key; it is closed when
// the test ends.
func newTestHost(t *testing.T, opts ...Option) (host.Host, crypto.PrivKey) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(key, append([]Option{loopback}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h, key
}

// addrWith waits (bounded) for h to advertise an address using protocol
// code and returns it.
func addrWith(t *testing.T, h host.Host, code int) ma.Multiaddr {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, a := range h.Addrs() {
			if _, err := a.ValueForProtocol(code); err == nil {
				return a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no address with %s among %v", ma.ProtocolWithCode(code).Name, h.Addrs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNewListensOnTCPAndQUIC(t *testing.T) {
	h, key := newTestHost(t)

	if want := mustPeerID(t, key); h.ID() != want {
		t.Fatalf("host ID = %s, want %s from the key", h.ID(), want)
	}
	tcpAddr := addrWith(t, h, ma.P_TCP)
	quicAddr := addrWith(t, h, ma.P_QUIC_V1)
	for _, a := range []ma.Multiaddr{tcpAddr, quicAddr} {
		if ip, _ := a.ValueForProtocol(ma.P_IP4); ip != "127.0.0.1" {
			t.Errorf("address %s is not on 127.0.0.1", a)
		}
	}
}

// connectVia connects a to b, telling a only b's address with protocol code,
// and returns a's connection to b.
func connectVia(t *testing.T, a, b host.Host, code int) network.Conn {
	t.Helper()
	addr := addrWith(t, b, code)
	if err := a.Connect(t.Context(), peer.AddrInfo{ID: b.ID(), Addrs: []ma.Multiaddr{addr}}); err != nil {
		t.Fatalf("connect over %s: %v", addr, err)
	}
	conns := a.Network().ConnsToPeer(b.ID())
	if len(conns) != 1 {
		t.Fatalf("%d connections to peer, want 1", len(conns))
	}
	c := conns[0]
	if c.RemotePeer() != b.ID() {
		t.Fatalf("connection is to %s, want %s", c.RemotePeer(), b.ID())
	}
	if !c.RemoteMultiaddr().Equal(addr) {
		t.Errorf("connection went to %s, want %s", c.RemoteMultiaddr(), addr)
	}
	return c
}

func TestConnectTCPUsesTLSAndYamux(t *testing.T) {
	a, _ := newTestHost(t)
	b, _ := newTestHost(t)

	c := connectVia(t, a, b, ma.P_TCP)
	st := c.ConnState()
	if st.Transport != "tcp" {
		t.Errorf("transport = %q, want tcp", st.Transport)
	}
	if st.Security != "/tls/1.0.0" {
		t.Errorf("security = %q, want /tls/1.0.0", st.Security)
	}
	if st.StreamMultiplexer != "/yamux/1.0.0" {
		t.Errorf("muxer = %q, want /yamux/1.0.0", st.StreamMultiplexer)
	}
	if _, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_TCP); err != nil {
		t.Errorf("remote address %s is not TCP", c.RemoteMultiaddr())
	}
}

func TestConnectQUIC(t *testing.T) {
	a, _ := newTestHost(t)
	b, _ := newTestHost(t)

	c := connectVia(t, a, b, ma.P_QUIC_V1)
	if st := c.ConnState(); st.Transport != "quic-v1" {
		t.Errorf("transport = %q, want quic-v1", st.Transport)
	}
	if _, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_QUIC_V1); err != nil {
		t.Errorf("remote address %s is not QUIC v1", c.RemoteMultiaddr())
	}
}

func TestNewRejectsInvalidOptions(t *testing.T) {
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := int64(1 << 20)
	cases := map[string]Option{
		"no listen addresses":       ListenAddrs(),
		"per-peer above total":      WithProtocolLimit("/test/x/1.0.0", ProtocolLimit{InboundStreamsPerPeer: 5, InboundStreams: 2, MemoryPerPeer: mem, Memory: mem}),
		"zero streams per peer":     WithProtocolLimit("/test/x/1.0.0", ProtocolLimit{InboundStreams: 2, MemoryPerPeer: mem, Memory: mem}),
		"peer memory above total":   WithProtocolLimit("/test/x/1.0.0", ProtocolLimit{InboundStreamsPerPeer: 1, InboundStreams: 2, MemoryPerPeer: 2 * mem, Memory: mem}),
		"zero peer memory":          WithProtocolLimit("/test/x/1.0.0", ProtocolLimit{InboundStreamsPerPeer: 1, InboundStreams: 2, Memory: mem}),
		"connection low above high": ConnectionLimits(10, 5),
		"zero connection low":       ConnectionLimits(0, 5),
	}
	for name, opt := range cases {
		t.Run(name, func(t *testing.T) {
			// Invalid options alone must fail; loopback keeps a wrongly
			// accepted host off public interfaces.
			h, err := New(key, loopback, opt)
			if err == nil {
				h.Close()
				t.Fatal("New accepted the option")
			}
			if h != nil {
				t.Errorf("New returned a host alongside error %v", err)
			}
		})
	}
}
