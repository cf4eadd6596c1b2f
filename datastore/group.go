package datastore

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Role is a member's role in a syncgroup (Syncbase's BlobDevType). The zero
// Role is RoleNormal.
type Role uint8

const (
	RoleNormal Role = iota
	RoleServer      // fetches every blob of the group
	RoleLeaf        // a device that keeps as little as it can
)

func (r Role) String() string {
	switch r {
	case RoleNormal:
		return "normal"
	case RoleServer:
		return "server"
	case RoleLeaf:
		return "leaf"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Valid reports whether r is one of the defined roles.
func (r Role) Valid() bool { return r <= RoleLeaf }

// ParseRole parses "server", "normal" or "leaf".
func ParseRole(s string) (Role, error) {
	switch s {
	case "normal":
		return RoleNormal, nil
	case "server":
		return RoleServer, nil
	case "leaf":
		return RoleLeaf, nil
	}
	return 0, fmt.Errorf("role %q: want server, normal or leaf", s)
}

// ACL says who may join a syncgroup: anyone if Open, else the peers in Allow.
type ACL struct {
	Open  bool
	Allow []peer.ID
}

// Admits reports whether p may join.
func (a ACL) Admits(p peer.ID) bool { return a.Open || slices.Contains(a.Allow, p) }

// Spec is what defines a syncgroup; it does not change after creation.
type Spec struct {
	ID      string // a protocol ID beginning SyncgroupPrefix
	Creator peer.ID
	ACL     ACL
	Created time.Time
}

// Member is a syncgroup member as last announced.
type Member struct {
	Peer  peer.ID
	Role  Role
	Addrs []ma.Multiaddr // where it listened when announced
	Since time.Time      // when this announcement was made
}

// Group is a syncgroup this peer belongs to, as stored at /sg/<id>.
type Group struct {
	Spec    Spec
	MyRole  Role
	Members []Member // sorted by peer ID; one per peer
}

// Member returns p's entry, if p is a member.
func (g *Group) Member(p peer.ID) (Member, bool) {
	i, found := slices.BinarySearchFunc(g.Members, p, func(m Member, p peer.ID) int { return cmp.Compare(m.Peer, p) })
	if !found {
		return Member{}, false
	}
	return g.Members[i], true
}

// SetMember adds m or replaces p's entry, keeping Members sorted.
func (g *Group) SetMember(m Member) {
	i, found := slices.BinarySearchFunc(g.Members, m.Peer, func(x Member, p peer.ID) int { return cmp.Compare(x.Peer, p) })
	if found {
		g.Members[i] = m
		return
	}
	g.Members = slices.Insert(g.Members, i, m)
}

// Clone returns a deep copy of g (member addresses are immutable and shared).
func (g Group) Clone() Group {
	g.Spec.ACL.Allow = slices.Clone(g.Spec.ACL.Allow)
	g.Members = slices.Clone(g.Members)
	return g
}

// BlobAnnouncement says a BlobRef is in a syncgroup and who probably holds it.
type BlobAnnouncement struct {
	Ref    Ref
	Holder peer.ID
}

// LogEntry is one entry of a syncgroup's announcement log. Origin numbers its
// own entries 1, 2, 3, …; (Origin, Seq) identifies an entry everywhere.
// Exactly one of Blob and Member is set.
type LogEntry struct {
	Origin peer.ID
	Seq    uint64
	Time   time.Time
	Blob   *BlobAnnouncement
	Member *Member
}
