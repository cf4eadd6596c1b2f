package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blobsync/blobsync"
	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

func cmdSg(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: sg needs a command: create, join, ls or members", errUsage)
	}
	switch args[0] {
	case "create":
		return cmdSgCreate(ctx, args[1:], e)
	case "join":
		return cmdSgJoin(ctx, args[1:], e)
	case "ls":
		return cmdSgLs(ctx, args[1:], e)
	case "members":
		return cmdSgMembers(ctx, args[1:], e)
	}
	return fmt.Errorf("%w: unknown sg command %q (want create, join, ls or members)", errUsage, args[0])
}

// checkRole validates a --role value before it reaches the daemon.
func checkRole(s string) error {
	if _, err := blobsync.ParseRole(s); err != nil {
		return fmt.Errorf("%w: --role: %v", errUsage, err)
	}
	return nil
}

// checkSgID validates a syncgroup ID before it reaches the daemon.
func checkSgID(id string) error {
	if err := datastore.CheckSyncgroupID(id); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

// post sends a JSON body and decodes a JSON answer.
func (c *apiClient) post(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := c.do(ctx, "POST", path, bytes.NewReader(body), int64(len(body)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeJSON(resp.Body, out)
}

func cmdSgCreate(ctx context.Context, args []string, e env) error {
	c := newCommand("sg create", e)
	role := c.fs.String("role", "normal", "this peer's role: server, normal or leaf")
	open := c.fs.Bool("open", false, "anyone may join")
	allow := c.fs.String("allow", "", "peer IDs that may join, comma-separated")
	pos, err := c.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkSgID(pos[0]); err != nil {
		return err
	}
	if err := checkRole(*role); err != nil {
		return err
	}
	req := sgCreateRequest{ID: pos[0], Role: *role, Open: *open}
	if *allow != "" {
		for _, s := range strings.Split(*allow, ",") {
			if _, err := peer.Decode(strings.TrimSpace(s)); err != nil {
				return fmt.Errorf("%w: --allow: %q is not a peer ID", errUsage, s)
			}
			req.Allow = append(req.Allow, strings.TrimSpace(s))
		}
	}
	if *open == (len(req.Allow) > 0) {
		return fmt.Errorf("%w: sg create needs exactly one of --open and --allow PEERID,…", errUsage)
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var v sgView
	if err := cl.post(ctx, "/v1/sg/create", req, &v); err != nil {
		return fmt.Errorf("sg create %s: %w", pos[0], err)
	}
	if c.json {
		return writeJSON(e.stdout, v)
	}
	fmt.Fprintf(e.stdout, "created %s (%s)\n", v.ID, v.MyRole)
	return nil
}

func cmdSgJoin(ctx context.Context, args []string, e env) error {
	c := newCommand("sg join", e)
	role := c.fs.String("role", "normal", "this peer's role: server, normal or leaf")
	via := c.fs.String("via", "", "a member's multiaddr, ending in /p2p/<peer ID> (default: find one through the DHT)")
	pos, err := c.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkSgID(pos[0]); err != nil {
		return err
	}
	if err := checkRole(*role); err != nil {
		return err
	}
	if *via != "" {
		if _, err := parsePeerAddr(*via); err != nil {
			return fmt.Errorf("%w: --via: %v", errUsage, err)
		}
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var v sgView
	if err := cl.post(ctx, "/v1/sg/join", sgJoinRequest{ID: pos[0], Role: *role, Via: *via}, &v); err != nil {
		return fmt.Errorf("sg join %s: %w", pos[0], err)
	}
	if c.json {
		return writeJSON(e.stdout, v)
	}
	fmt.Fprintf(e.stdout, "joined %s (%s), %d members\n", v.ID, v.MyRole, v.Members)
	return nil
}

func cmdSgLs(ctx context.Context, args []string, e env) error {
	c := newCommand("sg ls", e)
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var groups []sgView
	if err := cl.call(ctx, "GET", "/v1/sg", &groups); err != nil {
		return err
	}
	if c.json {
		return writeJSON(e.stdout, groups)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SYNCGROUP\tROLE\tMEMBERS\tENTRIES\tACL\tCREATOR")
	for _, g := range groups {
		acl := "open"
		if !g.Open {
			acl = fmt.Sprintf("%d allowed", len(g.Allow))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", g.ID, g.MyRole, g.Members, g.Entries, acl, g.Creator)
	}
	return tw.Flush()
}

func cmdSgMembers(ctx context.Context, args []string, e env) error {
	c := newCommand("sg members", e)
	pos, err := c.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkSgID(pos[0]); err != nil {
		return err
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var members []memberView
	if err := cl.call(ctx, "GET", "/v1/sg/members?id="+queryEscape(pos[0]), &members); err != nil {
		return err
	}
	if c.json {
		return writeJSON(e.stdout, members)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tROLE\tSINCE\tADDRS")
	for _, m := range members {
		since := "-"
		if !m.Since.IsZero() {
			since = m.Since.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Peer, m.Role, since, strings.Join(m.Addrs, " "))
	}
	return tw.Flush()
}
