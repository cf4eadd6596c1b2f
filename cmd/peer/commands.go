package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/blobsync/blobsync"
)

func cmdID(ctx context.Context, args []string, e env) error {
	c := newCommand("id", e)
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var id idResponse
	if err := cl.call(ctx, "GET", "/v1/id", &id); err != nil {
		return err
	}
	if c.json {
		return writeJSON(e.stdout, id)
	}
	fmt.Fprintln(e.stdout, id.ID)
	for _, a := range id.Addrs {
		fmt.Fprintln(e.stdout, a)
	}
	return nil
}

func cmdPut(ctx context.Context, args []string, e env) error {
	c := newCommand("put", e)
	public := c.fs.Bool("public", false, "serve the blob to anyone who asks by its BlobRef")
	var sgs stringList
	c.fs.Var(&sgs, "sg", "announce the blob in this syncgroup (repeatable)")
	pos, err := c.parse(args, 1, 1)
	if err != nil {
		return err
	}
	query := url.Values{"public": {strconv.FormatBool(*public)}}
	for _, sg := range sgs {
		if err := checkSgID(sg); err != nil {
			return err
		}
		query.Add("sg", sg)
	}
	in, size := e.stdin, int64(-1)
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("put %s: not a regular file", pos[0])
		}
		in, size = f, fi.Size()
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	resp, err := cl.do(ctx, "POST", "/v1/put?"+query.Encode(), in, size)
	if err != nil {
		return fmt.Errorf("put %s: %w", pos[0], err)
	}
	defer resp.Body.Close()
	var out putResponse
	if err := decodeJSON(resp.Body, &out); err != nil {
		return err
	}
	if c.json {
		return writeJSON(e.stdout, out)
	}
	fmt.Fprintln(e.stdout, out.Ref)
	return nil
}

func cmdHas(ctx context.Context, args []string, e env) error {
	c := newCommand("has", e)
	pos, err := c.parse(args, 1, 1)
	if err != nil {
		return err
	}
	ref, err := blobsync.ParseRef(pos[0])
	if err != nil {
		return err
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var has hasResponse
	if err := cl.call(ctx, "GET", "/v1/has/"+ref.String(), &has); err != nil {
		return err
	}
	if c.json {
		if err := writeJSON(e.stdout, has); err != nil {
			return err
		}
	} else if has.Held {
		fmt.Fprintln(e.stdout, has.Size)
	}
	if !has.Held {
		msg := ""
		if !c.json {
			msg = fmt.Sprintf("%s is not held here", ref)
		}
		return &exitError{code: 1, msg: msg}
	}
	return nil
}

func cmdLs(ctx context.Context, args []string, e env) error {
	c := newCommand("ls", e)
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var blobs []blobsync.BlobInfo
	if err := cl.call(ctx, "GET", "/v1/blobs", &blobs); err != nil {
		return err
	}
	if c.json {
		return writeJSON(e.stdout, blobs)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tSIZE\tSHARES\tPINNED\tPUBLIC\tCREATED")
	for _, b := range blobs {
		var shares int32
		for _, n := range b.Shares {
			shares += n
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%v\t%s\n", b.Ref, formatBytes(b.Size), shares, b.Pinned, b.Public, b.Created.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func cmdStatus(ctx context.Context, args []string, e env) error {
	c := newCommand("status", e)
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var st statusResponse
	if err := cl.call(ctx, "GET", "/v1/status", &st); err != nil {
		return err
	}
	if c.json {
		return writeJSON(e.stdout, st)
	}
	w := e.stdout
	fmt.Fprintf(w, "peer      %s (up %s)\n", st.ID, st.Uptime)
	for _, a := range st.Addrs {
		fmt.Fprintf(w, "listen    %s\n", a)
	}
	fmt.Fprintf(w, "peers     %d connected; DHT %s, %d servers known, %d records provided (%d failed)\n", len(st.Peers),
		map[bool]string{true: "server", false: "auto"}[st.DHT.Server], st.DHT.RoutingTable, st.DHT.Provided, st.DHT.Failed)
	for _, p := range st.Peers {
		for _, a := range p.Addrs {
			fmt.Fprintf(w, "          %s via %s\n", p.ID, a)
		}
	}
	fmt.Fprintf(w, "blobs     %d held, %s: %d owned (shares or pin), %d pinned, %d droppable by gc\n",
		st.Blobs, formatBytes(st.BlobBytes), st.Owned, st.Pinned, st.Droppable)
	for _, p := range st.Partials {
		fmt.Fprintf(w, "partial   %s %s so far\n", p.Ref, formatBytes(p.Size))
	}
	t := st.Transfers
	fmt.Fprintf(w, "sent      %s in %d blobs served\n", formatBytes(t.BytesSent), t.BlobsServed)
	fmt.Fprintf(w, "received  %s, %d blobs fetched\n", formatBytes(t.BytesReceived), t.BlobsFetched)
	q := st.Fetch
	fmt.Fprintf(w, "fetching  %d pending, %d in flight (last scan %s ago: %d blobs in %.1f ms)\n",
		q.Pending, q.InFlight, time.Since(q.LastScan.At).Round(time.Second), q.LastScan.Started, q.LastScan.TookMS)
	if len(q.Blobs) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  REF\tATTEMPTS\tNEXT\tLAST ERROR")
	for _, b := range q.Blobs {
		next := "in flight"
		if b.NextAttempt != nil {
			next = "in " + max(time.Until(*b.NextAttempt), 0).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\n", b.Ref, b.Attempts, next, b.LastError)
	}
	if q.Pending > len(q.Blobs) {
		fmt.Fprintf(tw, "  … %d more\n", q.Pending-len(q.Blobs))
	}
	return tw.Flush()
}

// formatBytes renders n in binary units: 512 B, 1.5 KiB, 64.0 MiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func queryEscape(s string) string { return url.QueryEscape(s) }
