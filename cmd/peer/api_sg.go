package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/blobsync/blobsync"
	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/syncgroup"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Control API for syncgroups.

type sgCreateRequest struct {
	ID    string   `json:"id"`
	Role  string   `json:"role"`
	Open  bool     `json:"open"`
	Allow []string `json:"allow,omitempty"`
}

type sgJoinRequest struct {
	ID   string `json:"id"`
	Role string `json:"role"`
	Via  string `json:"via"`
}

type sgView struct {
	ID      string    `json:"id"`
	Creator string    `json:"creator"`
	Open    bool      `json:"open"`
	Allow   []string  `json:"allow,omitempty"`
	MyRole  string    `json:"my_role"`
	Members int       `json:"members"`
	Entries uint64    `json:"entries"` // announcement log entries held here
	Created time.Time `json:"created"`
}

type memberView struct {
	Peer  string    `json:"peer"`
	Role  string    `json:"role"`
	Addrs []string  `json:"addrs"`
	Since time.Time `json:"since"`
}

func viewOf(g blobsync.Syncgroup) sgView {
	v := sgView{ID: g.Spec.ID, Creator: g.Spec.Creator.String(), Open: g.Spec.ACL.Open, MyRole: g.MyRole.String(), Members: len(g.Members), Created: g.Spec.Created}
	for _, p := range g.Spec.ACL.Allow {
		v.Allow = append(v.Allow, p.String())
	}
	return v
}

// sgStatus maps a syncgroup error to an HTTP status.
func sgStatus(err error) int {
	switch {
	case errors.Is(err, datastore.ErrBadSyncgroupID):
		return http.StatusBadRequest
	case errors.Is(err, protocol.ErrUnknownSyncgroup):
		return http.StatusNotFound
	case errors.Is(err, syncgroup.ErrExists):
		return http.StatusConflict
	case errors.Is(err, protocol.ErrJoinRefused), errors.Is(err, protocol.ErrNotMember):
		return http.StatusForbidden
	case errors.Is(err, blobsync.ErrNoMember):
		return http.StatusNotFound
	}
	return http.StatusBadGateway
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("request: %v", err))
		return false
	}
	return true
}

func parseRoleOrDefault(s string) (blobsync.Role, error) {
	if s == "" {
		return blobsync.RoleNormal, nil
	}
	return blobsync.ParseRole(s)
}

func (a *api) sgCreate(w http.ResponseWriter, r *http.Request) {
	var req sgCreateRequest
	if !decodeBody(w, r, &req) {
		return
	}
	role, err := parseRoleOrDefault(req.Role)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	acl := blobsync.ACL{Open: req.Open}
	for _, s := range req.Allow {
		p, err := peer.Decode(s)
		if err != nil {
			fail(w, http.StatusBadRequest, fmt.Errorf("--allow: %q is not a peer ID", s))
			return
		}
		acl.Allow = append(acl.Allow, p)
	}
	g, err := a.node.CreateSyncgroup(r.Context(), req.ID, acl, role)
	if err != nil {
		fail(w, sgStatus(err), err)
		return
	}
	a.log.Info("syncgroup created", "sg", g.Spec.ID, "role", role, "open", acl.Open, "allow", len(acl.Allow))
	reply(w, viewOf(g))
}

func (a *api) sgJoin(w http.ResponseWriter, r *http.Request) {
	var req sgJoinRequest
	if !decodeBody(w, r, &req) {
		return
	}
	role, err := parseRoleOrDefault(req.Role)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	var via peer.AddrInfo // zero: find a member through the DHT
	if req.Via != "" {
		if via, err = parsePeerAddr(req.Via); err != nil {
			fail(w, http.StatusBadRequest, fmt.Errorf("--via: %v", err))
			return
		}
	}
	g, err := a.node.JoinSyncgroup(r.Context(), req.ID, via, role)
	if err != nil {
		fail(w, sgStatus(err), err)
		return
	}
	a.log.Info("syncgroup joined", "sg", g.Spec.ID, "via", via.ID, "role", role, "members", len(g.Members))
	reply(w, viewOf(g))
}

func (a *api) sgList(w http.ResponseWriter, _ *http.Request) {
	out := []sgView{}
	for _, g := range a.node.Syncgroups() {
		v := viewOf(g)
		v.Entries, _ = a.node.SyncgroupEntries(g.Spec.ID)
		out = append(out, v)
	}
	reply(w, out)
}

func (a *api) sgMembers(w http.ResponseWriter, r *http.Request) {
	g, err := a.node.Syncgroup(r.URL.Query().Get("id"))
	if err != nil {
		fail(w, sgStatus(err), err)
		return
	}
	out := []memberView{}
	for _, m := range g.Members {
		v := memberView{Peer: m.Peer.String(), Role: m.Role.String(), Addrs: []string{}, Since: m.Since}
		for _, ad := range m.Addrs {
			v.Addrs = append(v.Addrs, ad.String())
		}
		out = append(out, v)
	}
	reply(w, out)
}
