package protocol

import (
	"fmt"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/peer"
)

// signpostToWire converts a signpost for sending; FetchAttempts never travels.
func signpostToWire(sp datastore.Signpost) *pb.Signpost {
	if len(sp.Locations) == 0 && len(sp.SgIDs) == 0 {
		return nil
	}
	w := &pb.Signpost{SgIds: sp.SgIDs}
	for _, l := range sp.Locations {
		w.Locations = append(w.Locations, &pb.Location{
			Peer: []byte(l.Peer), WhenSeenUnixNano: l.WhenSeen.UnixNano(), IsServer: l.IsServer, IsProxy: l.IsProxy,
		})
	}
	return w
}

// signpostFromWire converts a peer's signpost, keeping only what is valid:
// parseable peer IDs, well-formed syncgroup IDs, times no later than now, and
// no more entries than a signpost holds.
func signpostFromWire(w *pb.Signpost, now time.Time) datastore.Signpost {
	var sp datastore.Signpost
	for _, l := range w.GetLocations() {
		if len(sp.Locations) == datastore.MaxLocations {
			break
		}
		p, err := peer.IDFromBytes(l.GetPeer())
		if err != nil {
			continue
		}
		when := time.Unix(0, max(0, l.GetWhenSeenUnixNano()))
		if when.After(now) {
			when = now // a peer cannot make its entries outrank ours by claiming the future
		}
		sp.Locations = append(sp.Locations, datastore.Location{Peer: p, WhenSeen: when, IsServer: l.GetIsServer(), IsProxy: l.GetIsProxy()})
	}
	for _, sg := range w.GetSgIds() {
		if datastore.CheckSyncgroupID(sg) == nil {
			sp.AddSyncgroup(sg) // sorts, dedups and caps
		}
	}
	return sp
}

// MaxShares bounds one syncgroup's share count on the wire.
const MaxShares = 1 << 20

// sharesFromWire validates a share map: well-formed syncgroup IDs, counts in
// [0, MaxShares], at most MaxSignpostSyncgroups entries.
func sharesFromWire(m map[string]int32) (map[string]int32, error) {
	if len(m) > datastore.MaxSignpostSyncgroups {
		return nil, fmt.Errorf("%d syncgroups, at most %d", len(m), datastore.MaxSignpostSyncgroups)
	}
	for sg, n := range m {
		if err := datastore.CheckSyncgroupID(sg); err != nil {
			return nil, err
		}
		if n < 0 || n > MaxShares {
			return nil, fmt.Errorf("%d shares of %s", n, sg)
		}
	}
	return m, nil
}

// distanceFromWire validates a caller's distances to a server: well-formed
// syncgroup IDs, at most MaxSignpostSyncgroups; values above 2 count as 2.
func distanceFromWire(m map[string]uint32) (map[string]uint32, error) {
	if len(m) > datastore.MaxSignpostSyncgroups {
		return nil, fmt.Errorf("%d syncgroups, at most %d", len(m), datastore.MaxSignpostSyncgroups)
	}
	out := make(map[string]uint32, len(m))
	for sg, d := range m {
		if err := datastore.CheckSyncgroupID(sg); err != nil {
			return nil, err
		}
		out[sg] = min(d, 2)
	}
	return out, nil
}
