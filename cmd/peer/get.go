package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"

	"github.com/blobsync/blobsync"
	"github.com/blobsync/blobsync/datastore"
)

func cmdGet(ctx context.Context, args []string, e env) error {
	c := newCommand("get", e)
	out := c.fs.String("o", "", "write the blob to FILE (default stdout)")
	var from stringList
	c.fs.Var(&from, "from", "fetch from this peer, a multiaddr ending in /p2p/<id> (repeatable)")
	pos, err := c.parse(args, 1, 1)
	if err != nil {
		return err
	}
	ref, err := blobsync.ParseRef(pos[0])
	if err != nil {
		return err
	}
	for _, f := range from {
		if _, err := parsePeerAddr(f); err != nil {
			return fmt.Errorf("%w: --from: %v", errUsage, err)
		}
	}
	if c.json && *out == "" {
		return fmt.Errorf("%w: get --json needs -o FILE (stdout carries the blob)", errUsage)
	}
	cl, err := dialAPI(c.dataDir)
	if err != nil {
		return err
	}
	var has hasResponse
	if err := cl.call(ctx, "GET", "/v1/has/"+url.PathEscape(ref.String()), &has); err != nil {
		return err
	}
	if !has.Held {
		var bar *progressBar
		if !c.json && isTerminal(e.stderr) {
			bar = newProgressBar(e.stderr)
		}
		if err := fetchViaDaemon(ctx, cl, ref, from, bar); err != nil {
			return fmt.Errorf("get %s: %w", ref, err)
		}
	}
	size, err := copyOut(ctx, cl, ref, *out, e.stdout)
	if err != nil {
		return fmt.Errorf("get %s: %w", ref, err)
	}
	if c.json {
		return writeJSON(e.stdout, map[string]any{"ref": ref, "size": size, "output": *out, "fetched": !has.Held})
	}
	return nil
}

// fetchViaDaemon asks the daemon to fetch ref and follows its progress.
func fetchViaDaemon(ctx context.Context, cl *apiClient, ref blobsync.Ref, from []string, bar *progressBar) error {
	body, _ := json.Marshal(fetchRequest{Ref: ref.String(), From: from})
	resp, err := cl.do(ctx, "POST", "/v1/fetch", bytes.NewReader(body), int64(len(body)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if bar != nil {
		defer bar.finish()
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev fetchEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("control socket: bad progress line: %w", err)
		}
		switch {
		case ev.Final && ev.Error != "":
			return errors.New(ev.Error)
		case ev.Final:
			return nil
		case bar != nil:
			bar.update(ev.Done, ev.Total)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("the daemon stopped before the fetch ended")
}

// copyOut writes the held blob to path (atomically) or to stdout, verifying on
// the way that the bytes hash to ref.
func copyOut(ctx context.Context, cl *apiClient, ref blobsync.Ref, path string, stdout io.Writer) (int64, error) {
	resp, err := cl.do(ctx, "GET", "/v1/blob/"+url.PathEscape(ref.String()), nil, -1)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if path == "" {
		return copyVerified(stdout, resp.Body, ref)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".part-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name()) // after a successful rename, a no-op
	n, err := copyVerified(f, resp.Body, ref)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	return n, os.Rename(f.Name(), path)
}

func copyVerified(w io.Writer, r io.Reader, ref blobsync.Ref) (int64, error) {
	h := datastore.NewHasher()
	n, err := io.Copy(io.MultiWriter(w, h), r)
	if err != nil {
		return n, err
	}
	var d [datastore.DigestSize]byte
	h.Sum(d[:0])
	if datastore.RefFromDigest(d) != ref {
		return n, fmt.Errorf("the daemon's copy does not match %s: %w", ref, datastore.ErrHashMismatch)
	}
	return n, nil
}

func decodeJSON(r io.Reader, out any) error {
	if err := json.NewDecoder(r).Decode(out); err != nil {
		return fmt.Errorf("control socket: bad answer: %w", err)
	}
	return nil
}
