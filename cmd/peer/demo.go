package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/blobsync/blobsync"
	"github.com/libp2p/go-libp2p/core/peer"
)

const demoSyncgroup = "/blobsync/sg/demo"

// cmdDemo runs a self-contained demonstration on 127.0.0.1: a device and two
// servers, each a full node with its own data directory in a temp dir
// (removed afterwards), in one syncgroup. The device puts a blob; the servers
// fetch it, verified, without anybody asking them to.
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
		fmt.Fprintf(e.stdout, "[%7.1f ms] %s\n", float64(time.Since(start).Microseconds())/1000, fmt.Sprintf(format, args...))
	}
	fmt.Fprintln(e.stdout, "blobsync demo: a device and two servers on 127.0.0.1")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	var nodes []*runningNode
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	for _, name := range []string{"device", "server-1", "server-2"} {
		n, err := demoNode(filepath.Join(tmp, name), quiet)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		step("%-8s %s listening on %s", name, n.host.ID(), n.host.Addrs()[0])
	}
	device, servers := nodes[0].node, []*blobsync.Node{nodes[1].node, nodes[2].node}

	if _, err := device.CreateSyncgroup(ctx, demoSyncgroup, blobsync.ACL{Open: true}, blobsync.RoleNormal); err != nil {
		return err
	}
	step("device   created syncgroup %s", demoSyncgroup)
	via := peer.AddrInfo{ID: device.Host().ID(), Addrs: device.Host().Addrs()}
	for i, s := range servers {
		if _, err := s.JoinSyncgroup(ctx, demoSyncgroup, via, blobsync.RoleServer); err != nil {
			return err
		}
		step("server-%d joined as a server", i+1)
	}

	data := make([]byte, *size)
	rand.Read(data)
	ref, n, err := device.Put(ctx, bytes.NewReader(data), blobsync.PutOptions{Syncgroups: []string{demoSyncgroup}})
	if err != nil {
		return fmt.Errorf("device put: %w", err)
	}
	putAt := time.Now()
	step("device   put %s blob %s into the syncgroup; nobody asks the servers for it", formatBytes(n), ref)

	for i, s := range servers {
		if err := waitHeld(ctx, s, ref, 30*time.Second); err != nil {
			return fmt.Errorf("server-%d: %w", i+1, err)
		}
		if err := sameBytes(s, ref, data); err != nil {
			return fmt.Errorf("server-%d: %w", i+1, err)
		}
		step("server-%d holds a verified, byte-identical copy, %v after the put returned", i+1, time.Since(putAt).Round(100*time.Microsecond))
	}
	step("device   served %s in all; it may now go offline and the blob survives", formatBytes(device.Stats().BytesSent))
	fmt.Fprintln(e.stdout, "demo complete")
	return nil
}

// waitHeld waits until n holds ref, polling every millisecond up to limit.
func waitHeld(ctx context.Context, n *blobsync.Node, ref blobsync.Ref, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, ok, err := n.Has(ref); err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("did not fetch %s within %v", ref, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

func sameBytes(n *blobsync.Node, ref blobsync.Ref, want []byte) error {
	f, _, err := n.Open(ref)
	if err != nil {
		return err
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("its copy differs from the device's")
	}
	return nil
}

// demoNode initializes a data directory and starts its node on 127.0.0.1.
func demoNode(dir string, log *slog.Logger) (*runningNode, error) {
	l := layout(dir)
	if _, err := initDataDir(l); err != nil {
		return nil, err
	}
	return openNode(l, nodeOptions{listen: []string{"/ip4/127.0.0.1/tcp/0"}, budget: -1}, log)
}
