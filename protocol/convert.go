package protocol

import (
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
