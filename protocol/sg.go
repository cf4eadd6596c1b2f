package protocol

import (
	"context"
	"errors"

	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// The syncgroup protocol: every syncgroup's members speak a stream protocol
// whose ID is the syncgroup ID. Each stream carries one SgRequest (Join,
// Members, Pull or Announce) and one SgResponse.

// Caps of the syncgroup protocol.
const (
	MaxSgFrameSize     = 2 << 20 // request or response frame
	MaxAnnounceEntries = 1000    // entries in one Announce
	MaxPullEntries     = 1000    // entries in one Pull response
	MaxPullWatermarks  = 10000   // origins in one Pull request
	MaxMemberAddrs     = 16      // addresses of one member
)

// Errors of the syncgroup protocol; test them with errors.Is.
var (
	// ErrUnknownSyncgroup: the peer does not serve that syncgroup.
	ErrUnknownSyncgroup = errors.New("unknown syncgroup")
	// ErrNotMember: syncgroup traffic from (or about) a peer that is not a member.
	ErrNotMember = errors.New("not a member of the syncgroup")
	// ErrJoinRefused: the syncgroup's ACL does not admit the joiner.
	ErrJoinRefused = errors.New("join refused by the syncgroup's ACL")
)

// Syncgroups answers the syncgroup protocol for this peer; the syncgroup
// package implements it. Errors wrapping ErrUnknownSyncgroup, ErrNotMember,
// ErrJoinRefused or ErrBadRequest are sent to the caller as such; any other
// error is logged and answered as an internal failure.
type Syncgroups interface {
	// HandleJoin admits caller into syncgroup id with role and addrs, if the
	// ACL allows, and returns the syncgroup's spec.
	HandleJoin(ctx context.Context, id string, caller peer.ID, role datastore.Role, addrs []ma.Multiaddr) (datastore.Spec, error)
	// HandleMembers returns the members of id, for a member caller.
	HandleMembers(ctx context.Context, id string, caller peer.ID) ([]datastore.Member, error)
	// HandlePull returns, for a member caller, entries of id it lacks given
	// since (origin → highest Seq it holds): per origin in Seq order, at most
	// limit in all, and whether more remain.
	HandlePull(ctx context.Context, id string, caller peer.ID, since map[peer.ID]uint64, limit int) ([]datastore.LogEntry, bool, error)
	// HandleAnnounce takes entries pushed by a member caller and returns how
	// many were new.
	HandleAnnounce(ctx context.Context, id string, caller peer.ID, entries []datastore.LogEntry) (int, error)
}
