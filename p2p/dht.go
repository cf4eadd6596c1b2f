package p2p

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	routedhost "github.com/libp2p/go-libp2p/p2p/host/routed"
	mh "github.com/multiformats/go-multihash"
)

// DHTPrefix is the protocol prefix of blobsync's private DHT: its peers never
// talk to the public IPFS DHT, and it never uses IPFS bootstrap peers.
const DHTPrefix = "/blobsync"

// DHT is blobsync's Kademlia DHT: peer routing (FindPeer), syncgroup
// rendezvous and blob provider records.
type DHT struct {
	d *dht.IpfsDHT
}

// NewDHT starts the DHT on h. A server answers queries and stores records
// for others; otherwise the DHT is in auto mode (a client unless the host is
// publicly reachable). Bootstrap peers are connected to in the background,
// and again whenever the routing table runs low.
func NewDHT(ctx context.Context, h host.Host, server bool, bootstrap []peer.AddrInfo) (*DHT, error) {
	mode := dht.ModeAuto
	if server {
		mode = dht.ModeServer
	}
	opts := []dht.Option{dht.ProtocolPrefix(DHTPrefix), dht.Mode(mode)}
	if len(bootstrap) > 0 {
		opts = append(opts, dht.BootstrapPeers(bootstrap...))
	}
	d, err := dht.New(h, opts...)
	if err != nil {
		return nil, fmt.Errorf("dht: %w", err)
	}
	for _, b := range bootstrap {
		h.Peerstore().AddAddrs(b.ID, b.Addrs, 24*time.Hour)
	}
	if err := d.Bootstrap(ctx); err != nil { // starts the routing table refresh
		d.Close()
		return nil, fmt.Errorf("dht: %w", err)
	}
	return &DHT{d: d}, nil
}

// Close stops the DHT.
func (d *DHT) Close() error { return d.d.Close() }

// Server reports whether the DHT was started in server mode, answering
// queries for others; otherwise it is in auto mode (a client unless publicly
// reachable). The mode is chosen at start.
func (d *DHT) Server() bool { return d.d.Mode() == dht.ModeServer }

// RoutingTableSize returns how many DHT servers the routing table holds.
func (d *DHT) RoutingTableSize() int { return d.d.RoutingTable().Size() }

// Routed wraps h so that dialing a peer whose addresses are unknown, or stale,
// asks the DHT (FindPeer) for its current ones.
func (d *DHT) Routed(h host.Host) host.Host { return routedhost.Wrap(h, d.d) }

// FindPeer looks up p's addresses.
func (d *DHT) FindPeer(ctx context.Context, p peer.ID) (peer.AddrInfo, error) {
	return d.d.FindPeer(ctx, p)
}

// Provide announces that this peer holds the content named key.
func (d *DHT) Provide(ctx context.Context, key cid.Cid) error {
	return d.d.Provide(ctx, key, true)
}

// FindProviders returns up to limit peers that provide key.
func (d *DHT) FindProviders(ctx context.Context, key cid.Cid, limit int) ([]peer.AddrInfo, error) {
	return collectProviders(ctx, d.d.FindProvidersAsync(ctx, key, limit), limit)
}

// collectProviders gathers up to limit providers from ch until it closes or
// ctx ends: a search bounded in number and time. It is an error only if ctx
// ended before any provider was found.
func collectProviders(ctx context.Context, ch <-chan peer.AddrInfo, limit int) ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	for len(out) < limit {
		select {
		case ai, ok := <-ch:
			if !ok {
				return out, nil
			}
			out = append(out, ai)
		case <-ctx.Done():
			if len(out) == 0 {
				return nil, ctx.Err()
			}
			return out, nil
		}
	}
	return out, nil
}

// RendezvousKey is the DHT key under which the members of syncgroup id
// provide themselves: a CID of the SHA-256 of a domain-separated string, so it
// can never equal a BlobRef (BLAKE3) or another application's key.
func RendezvousKey(id string) (cid.Cid, error) {
	if err := datastore.CheckSyncgroupID(id); err != nil {
		return cid.Undef, err
	}
	sum := sha256.Sum256([]byte("blobsync rendezvous v1\x00" + id))
	m, err := mh.Encode(sum[:], mh.SHA2_256)
	if err != nil {
		return cid.Undef, errors.New("p2p: encoding a rendezvous key")
	}
	return cid.NewCidV1(cid.Raw, m), nil
}
