package p2p

import (
	"fmt"
	"maps"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
)

// ProtocolLimit bounds what peers may use of one protocol.
type ProtocolLimit struct {
	InboundStreamsPerPeer int   // concurrent inbound streams from one peer
	InboundStreams        int   // concurrent inbound streams from all peers
	MemoryPerPeer         int64 // bytes the protocol may reserve for one peer
	Memory                int64 // bytes the protocol may reserve in all
}

// all and perPeer are l as resource-manager limits: outbound streams are
// allowed four times the inbound ones.
func (l ProtocolLimit) all() rcmgr.BaseLimit {
	return rcmgr.BaseLimit{StreamsInbound: l.InboundStreams, StreamsOutbound: 4 * l.InboundStreams, Streams: 5 * l.InboundStreams, Memory: l.Memory}
}

func (l ProtocolLimit) perPeer() rcmgr.BaseLimit {
	return rcmgr.BaseLimit{StreamsInbound: l.InboundStreamsPerPeer, StreamsOutbound: 4 * l.InboundStreamsPerPeer, Streams: 5 * l.InboundStreamsPerPeer, Memory: l.MemoryPerPeer}
}

// valid reports whether l's numbers are consistent.
func (l ProtocolLimit) valid() bool {
	return l.InboundStreamsPerPeer > 0 && l.InboundStreams >= l.InboundStreamsPerPeer && l.MemoryPerPeer > 0 && l.Memory >= l.MemoryPerPeer
}

type config struct {
	listen    []ma.Multiaddr
	limits    map[protocol.ID]ProtocolLimit
	services  map[string]ProtocolLimit
	connLow   int
	connHigh  int
	userAgent string
	metrics   bool
}

// Option configures New.
type Option func(*config) error

// DefaultListenAddrs are used when ListenAddrs is not given: every interface,
// a port chosen by the system, over TCP and QUIC.
var DefaultListenAddrs = []string{"/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"}

// ListenAddrs sets the addresses to listen on (default DefaultListenAddrs).
func ListenAddrs(addrs ...ma.Multiaddr) Option {
	return func(c *config) error {
		if len(addrs) == 0 {
			return fmt.Errorf("p2p: no listen addresses")
		}
		c.listen = addrs
		return nil
	}
}

// WithProtocolLimit sets the resource-manager limits of protocol id.
func WithProtocolLimit(id protocol.ID, l ProtocolLimit) Option {
	return func(c *config) error {
		if !l.valid() {
			return fmt.Errorf("p2p: limits for %s are inconsistent: %+v", id, l)
		}
		c.limits[id] = l
		return nil
	}
}

// WithServiceLimit sets the resource-manager limits of a service: the streams
// attached to it with Scope().SetService(name), over any protocols.
func WithServiceLimit(name string, l ProtocolLimit) Option {
	return func(c *config) error {
		if !l.valid() {
			return fmt.Errorf("p2p: limits for service %s are inconsistent: %+v", name, l)
		}
		c.services[name] = l
		return nil
	}
}

// ConnectionLimits sets the connection manager's watermarks (default 100, 400):
// above high, connections are trimmed down to low.
func ConnectionLimits(low, high int) Option {
	return func(c *config) error {
		if low <= 0 || high < low {
			return fmt.Errorf("p2p: connection limits low=%d high=%d are inconsistent", low, high)
		}
		c.connLow, c.connHigh = low, high
		return nil
	}
}

// UserAgent sets the agent version announced through identify.
func UserAgent(ua string) Option {
	return func(c *config) error { c.userAgent = ua; return nil }
}

// Metrics turns go-libp2p's own Prometheus metrics (resource manager, swarm,
// identify…, registered with prometheus.DefaultRegisterer) on or off; they are
// off by default: they cost CPU on every stream (the resource manager formats
// a timestamp per event), worth paying only where they are served.
func Metrics(on bool) Option {
	return func(c *config) error { c.metrics = on; return nil }
}

// New builds a libp2p host with identity key: TCP and QUIC transports, TLS
// (preferred) and Noise, yamux, a connection manager and a resource manager
// with the configured protocol limits. No relays, no NAT port mapping.
func New(key crypto.PrivKey, opts ...Option) (host.Host, error) {
	c := config{limits: map[protocol.ID]ProtocolLimit{}, services: map[string]ProtocolLimit{}, connLow: 100, connHigh: 400, userAgent: "blobsync"}
	for _, a := range DefaultListenAddrs {
		c.listen = append(c.listen, ma.StringCast(a))
	}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, err
		}
	}

	limits := rcmgr.DefaultLimits
	// Every new stream waits in the shared transient scope while its protocol
	// is negotiated (up to 10 s). go-libp2p lets one peer hold more inbound
	// streams than that scope has room for, so one peer's streams that never
	// negotiate could refuse everyone else's: a peer gets a quarter of it.
	limits.PeerBaseLimit.StreamsInbound = limits.TransientBaseLimit.StreamsInbound / 4
	limits.PeerLimitIncrease.StreamsInbound = limits.TransientLimitIncrease.StreamsInbound / 4
	// The copy shares DefaultLimits' maps; give it its own before adding to them.
	limits.ProtocolLimits = maps.Clone(limits.ProtocolLimits)
	limits.ProtocolPeerLimits = maps.Clone(limits.ProtocolPeerLimits)
	for id, l := range c.limits {
		limits.AddProtocolLimit(id, l.all(), rcmgr.BaseLimitIncrease{})
		limits.AddProtocolPeerLimit(id, l.perPeer(), rcmgr.BaseLimitIncrease{})
	}
	limits.ServiceLimits = maps.Clone(limits.ServiceLimits)
	limits.ServicePeerLimits = maps.Clone(limits.ServicePeerLimits)
	for name, l := range c.services {
		limits.AddServiceLimit(name, l.all(), rcmgr.BaseLimitIncrease{})
		limits.AddServicePeerLimit(name, l.perPeer(), rcmgr.BaseLimitIncrease{})
	}
	var rmOpts []rcmgr.Option
	metrics := libp2p.PrometheusRegisterer(prometheus.DefaultRegisterer)
	if !c.metrics {
		rmOpts = append(rmOpts, rcmgr.WithMetricsDisabled())
		metrics = libp2p.DisableMetrics()
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()), rmOpts...)
	if err != nil {
		return nil, fmt.Errorf("p2p: resource manager: %w", err)
	}
	cm, err := connmgr.NewConnManager(c.connLow, c.connHigh)
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("p2p: connection manager: %w", err)
	}
	h, err := libp2p.New(
		libp2p.Identity(key),
		libp2p.ListenAddrs(c.listen...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.DisableRelay(),
		libp2p.UserAgent(c.userAgent),
		metrics,
	)
	if err != nil {
		// libp2p.New closes rm and cm only on some failure paths (bad config,
		// not a failed listen); both tolerate a second Close.
		cm.Close()
		rm.Close()
		return nil, fmt.Errorf("p2p: %w", err)
	}
	return h, nil
}
