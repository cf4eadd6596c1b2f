package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode"

	"github.com/blobsync/blobsync"
	"github.com/blobsync/blobsync/datastore"
)

// Pins and garbage collection.

func (a *api) pin(pinned bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ref, ok := pathRef(w, r)
		if !ok {
			return
		}
		set := a.node.Unpin
		if pinned {
			set = a.node.Pin
		}
		if err := set(r.Context(), ref); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, datastore.ErrNotFound) {
				code, err = http.StatusNotFound, fmt.Errorf("blob %s is not held here", ref)
			}
			fail(w, code, err)
			return
		}
		reply(w, map[string]any{"ref": ref, "pinned": pinned})
	}
}

func (a *api) gc(w http.ResponseWriter, r *http.Request) {
	res, err := a.node.GC(r.Context())
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	if res.Dropped == nil {
		res.Dropped = []blobsync.BlobInfo{}
	}
	reply(w, res)
}

func cmdPin(pinned bool) func(context.Context, []string, env) error {
	name, path := "unpin", "/v1/unpin/"
	if pinned {
		name, path = "pin", "/v1/pin/"
	}
	return func(ctx context.Context, args []string, e env) error {
		c := newCommand(name, e)
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
		var out map[string]any
		if err := cl.post(ctx, path+ref.String(), struct{}{}, &out); err != nil {
			return fmt.Errorf("%s %s: %w", name, ref, err)
		}
		if c.json {
			return writeJSON(e.stdout, out)
		}
		fmt.Fprintf(e.stdout, "%sned %s\n", name, ref)
		return nil
	}
}

func cmdGC(ctx context.Context, args []string, e env) error {
	c := newCommand("gc", e)
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var res blobsync.GCResult
	if err := cl.post(ctx, "/v1/gc", struct{}{}, &res); err != nil {
		return err
	}
	if c.json {
		return writeJSON(e.stdout, res)
	}
	for _, b := range res.Dropped {
		fmt.Fprintf(e.stdout, "dropped %s %s\n", b.Ref, formatBytes(b.Size))
	}
	fmt.Fprintf(e.stdout, "freed %s in %d blobs; %d held\n", formatBytes(res.Freed), len(res.Dropped), res.Kept)
	return nil
}

// parseSize parses a byte count: 1000, 10MB, 1.5GiB, 512k (k, M, G, T in
// powers of 1000, Ki, Mi, Gi, Ti in powers of 1024; a trailing B is allowed).
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "B")
	i := strings.IndexFunc(t, func(r rune) bool { return unicode.IsLetter(r) })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], t[i:]
	}
	mult := map[string]float64{"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
		"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}[unit]
	f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if mult == 0 || err != nil || f < 0 || f*mult > 1<<62 {
		return 0, fmt.Errorf("size %q: want a byte count like 500000000, 500MB or 10GiB", s)
	}
	return int64(f * mult), nil
}
