package blobsync

import (
	"context"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/p2p"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Syncgroup, ACL, Role and Member are the syncgroup types a caller sees.
type (
	Syncgroup = datastore.Group
	ACL       = datastore.ACL
	Role      = datastore.Role
	Member    = datastore.Member
)

// The roles a member may have in a syncgroup.
const (
	RoleNormal = datastore.RoleNormal
	RoleServer = datastore.RoleServer
	RoleLeaf   = datastore.RoleLeaf
)

// ParseRole parses "server", "normal" or "leaf".
func ParseRole(s string) (Role, error) { return datastore.ParseRole(s) }

// CreateSyncgroup creates syncgroup id (a protocol ID beginning /blobsync/sg/)
// with this peer as its creator and first member.
func (n *Node) CreateSyncgroup(ctx context.Context, id string, acl ACL, role Role) (Syncgroup, error) {
	g, err := n.groups.Create(ctx, id, acl, role)
	if err == nil {
		n.joined(id, role)
	}
	return g, err
}

// joined starts what membership of syncgroup id with role entails here.
func (n *Node) joined(id string, role Role) {
	if role == RoleServer {
		n.fetchServer.Rescan() // signposts learned before this peer served the group
	}
	if key, err := p2p.RendezvousKey(id); err == nil {
		n.provide(key)
	}
}

// JoinSyncgroup joins syncgroup id through via, a member, and pulls what the
// members have announced so far. With no via (a zero AddrInfo), it finds
// members through the DHT rendezvous and joins through the first that admits it.
func (n *Node) JoinSyncgroup(ctx context.Context, id string, via peer.AddrInfo, role Role) (Syncgroup, error) {
	var g Syncgroup
	var err error
	if via.ID == "" {
		g, err = n.joinByRendezvous(ctx, id, role)
	} else {
		n.addAddrs(via)
		g, err = n.groups.Join(ctx, id, via.ID, role)
	}
	if err == nil {
		n.joined(id, role)
	}
	return g, err
}

// Syncgroups returns the syncgroups this peer belongs to.
func (n *Node) Syncgroups() []Syncgroup { return n.groups.Groups() }

// Syncgroup returns syncgroup id; the error wraps ErrUnknownSyncgroup if this
// peer does not belong to it.
func (n *Node) Syncgroup(id string) (Syncgroup, error) { return n.groups.Group(id) }

// ProcessBlobRefs is what an embedding object-sync server calls when its own
// sync delivers, from peer from, objects of syncgroup sg that carry refs: the
// BlobRefs are announced in sg's log with from as where they probably are.
func (n *Node) ProcessBlobRefs(ctx context.Context, sg string, from peer.ID, refs []Ref) error {
	anns := make([]datastore.BlobAnnouncement, len(refs))
	for i, r := range refs {
		anns[i] = datastore.BlobAnnouncement{Ref: r, Holder: from}
	}
	return n.groups.Announce(ctx, sg, anns)
}

// SyncgroupEntries returns how many entries of syncgroup id's announcement
// log this peer holds (the sum of its per-origin watermarks).
func (n *Node) SyncgroupEntries(id string) (uint64, error) {
	wm, err := n.groups.Watermarks(id)
	var sum uint64
	for _, seq := range wm {
		sum += seq
	}
	return sum, err
}
