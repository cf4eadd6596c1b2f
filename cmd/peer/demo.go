package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/blobsync/blobsync"
	"github.com/blobsync/blobsync/datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// cmdDemo runs a self-contained demonstration on 127.0.0.1: a device and a
// server, each a full node with its own data directory in a temp dir (removed
// afterwards). The device puts a blob; the server fetches it, verified.
func cmdDemo(ctx context.Context, args []string, e env) error {
	c := newCommand("demo", e)
	size := c.fs.Int("size", 16<<20, "size in bytes of the demo blob")
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	if *size < 0 {
		return fmt.Errorf("%w: --size %d must not be negative", errUsage, *size)
	}
	tmp, err := os.MkdirTemp("", "blobsync-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	step := func(format string, args ...any) {
		fmt.Fprintf(e.stdout, "[%6.1f ms] %s\n", float64(time.Since(start).Microseconds())/1000, fmt.Sprintf(format, args...))
	}
	fmt.Fprintln(e.stdout, "blobsync demo: a device and a server on 127.0.0.1")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	device, err := demoNode(filepath.Join(tmp, "device"), quiet)
	if err != nil {
		return err
	}
	defer device.Close()
	step("device  %s listening on %s", device.host.ID(), device.host.Addrs()[0])
	server, err := demoNode(filepath.Join(tmp, "server"), quiet)
	if err != nil {
		return err
	}
	defer server.Close()
	step("server  %s listening on %s", server.host.ID(), server.host.Addrs()[0])

	data := make([]byte, *size)
	rand.Read(data)
	ref, n, err := device.node.Put(ctx, bytes.NewReader(data), blobsync.PutOptions{Public: true})
	if err != nil {
		return fmt.Errorf("device put: %w", err)
	}
	step("device  put %s blob %s (public)", formatBytes(n), ref)

	fetchStart := time.Now()
	from := peer.AddrInfo{ID: device.host.ID(), Addrs: device.host.Addrs()}
	got, err := server.node.Fetch(ctx, ref, blobsync.FetchOptions{From: []peer.AddrInfo{from}})
	if err != nil {
		return fmt.Errorf("server fetch: %w", err)
	}
	took := time.Since(fetchStart)
	step("server  fetched %s from the device in %v (%.0f MB/s), verified against its BlobRef",
		formatBytes(got), took.Round(time.Millisecond), float64(got)/took.Seconds()/1e6)

	f, _, err := server.node.Open(ref)
	if err != nil {
		return err
	}
	held, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return err
	}
	if !bytes.Equal(held, data) || datastore.RefOf(held) != ref {
		return fmt.Errorf("the server's copy of %s differs from the device's", ref)
	}
	step("server  holds a byte-identical copy; device served %s", formatBytes(device.node.Stats().BytesSent))
	fmt.Fprintln(e.stdout, "demo complete")
	return nil
}

// demoNode initializes a data directory and starts its node on 127.0.0.1.
func demoNode(dir string, log *slog.Logger) (*runningNode, error) {
	l := layout(dir)
	if _, err := initDataDir(l); err != nil {
		return nil, err
	}
	return openNode(l, []string{"/ip4/127.0.0.1/tcp/0"}, log)
}
