package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/blobsync/blobsync"
	"github.com/blobsync/blobsync/fetcher"
	"github.com/blobsync/blobsync/p2p"
	"github.com/blobsync/blobsync/protocol"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/host"
)

func cmdDaemon(ctx context.Context, args []string, e env) error {
	c := newCommand("daemon", e)
	var listen stringList
	c.fs.Var(&listen, "listen", "multiaddr to listen on (repeatable; default: config.json)")
	logLevel := c.fs.String("log-level", "info", "debug, info, warn or error")
	maxStorage := c.fs.String("max-storage", "", "storage budget, e.g. 10GiB (default: config.json's, else none)")
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	var budget int64 = -1
	if *maxStorage != "" {
		b, err := parseSize(*maxStorage)
		if err != nil {
			return fmt.Errorf("%w: --max-storage: %v", errUsage, err)
		}
		budget = b
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, *logLevel)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	return runDaemon(ctx, layout(c.dataDir), listen, budget, log)
}

// runDaemon runs a node on the data directory until ctx is cancelled, then
// shuts down: the control API, the node, the host and the datastore, in order.
func runDaemon(ctx context.Context, l layout, listen []string, budget int64, log *slog.Logger) error {
	rt, err := openNode(l, listen, budget, log)
	if err != nil {
		return err
	}
	defer rt.Close()
	h := rt.node.Host()

	ln, err := listenSocket(l.socket())
	if err != nil {
		return err
	}
	defer os.Remove(l.socket())
	a := &api{node: rt.node, log: log, started: time.Now()}
	srv := &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx }, // shutdown cancels fetches in progress
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("daemon ready", "id", h.ID(), "addrs", strings.Join(p2pAddrs(h), " "), "data", string(l))

	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("control API: %w", err)
	}
	log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		srv.Close()
	}
	return nil
}

// runningNode is a node with the host and datastore it runs on.
type runningNode struct {
	node *blobsync.Node
	host host.Host
	ds   *leveldb.Datastore
}

// openNode starts the node of an initialized data directory, listening on
// listen if given, else on config.json's addresses, with the storage budget
// given if not negative, else config.json's.
func openNode(l layout, listen []string, budget int64, log *slog.Logger) (*runningNode, error) {
	cfg, err := loadConfig(l)
	if err != nil {
		return nil, err
	}
	if budget < 0 {
		budget = cfg.Limits.MaxStorage
	}
	if len(listen) > 0 {
		cfg.Listen = listen
	}
	addrs, err := parseAddrs(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: --listen: %v", errUsage, err)
	}
	key, err := p2p.LoadOrCreateIdentity(l.identity())
	if err != nil {
		return nil, err
	}
	d, err := leveldb.NewDatastore(l.datastore(), nil)
	if err != nil {
		if strings.Contains(err.Error(), "resource temporarily unavailable") {
			return nil, fmt.Errorf("another daemon is already running on %s", l)
		}
		return nil, fmt.Errorf("datastore: %w", err)
	}
	perPeer := cfg.Limits.InboundStreamsPerPeer
	h, err := p2p.New(key,
		p2p.ListenAddrs(addrs...),
		p2p.WithProtocolLimit(protocol.ID, p2p.ProtocolLimit{
			InboundStreamsPerPeer: perPeer,
			InboundStreams:        16 * perPeer,
			MemoryPerPeer:         int64(perPeer) * protocol.DefaultBufferSize,
			Memory:                16 * int64(perPeer) * protocol.DefaultBufferSize,
		}),
		p2p.WithServiceLimit(protocol.SgServiceName, p2p.ProtocolLimit{
			InboundStreamsPerPeer: perPeer,
			InboundStreams:        16 * perPeer,
			MemoryPerPeer:         2 * protocol.MaxSgFrameSize,
			Memory:                16 * protocol.MaxSgFrameSize,
		}),
		p2p.UserAgent("blobsync-peer"),
	)
	if err != nil {
		d.Close()
		return nil, err
	}
	node, err := blobsync.New(h, d, l.blobs(),
		blobsync.WithLogger(log),
		blobsync.WithProtocolOptions(protocol.MaxBlobSize(cfg.Limits.MaxBlobSize), protocol.UploadRate(cfg.Limits.MaxUploadRate)),
		blobsync.WithFetcherOptions([]fetcher.Option{fetcher.Concurrency(cfg.Limits.FetchConcurrency)}),
		blobsync.WithStorageBudget(budget))
	if err != nil {
		h.Close()
		d.Close()
		return nil, err
	}
	return &runningNode{node: node, host: h, ds: d}, nil
}

// Close stops the node, then its host, then its datastore.
func (r *runningNode) Close() error {
	return errors.Join(r.node.Close(), r.host.Close(), r.ds.Close())
}

// listenSocket listens on the control socket, mode 0600. A socket left by a
// daemon that died is replaced: holding the datastore lock proves no daemon
// runs here.
func listenSocket(path string) (net.Listener, error) {
	if len(path) >= 104 { // sun_path is 104 bytes on some systems, 108 on Linux
		return nil, fmt.Errorf("control socket path %s is too long (%d bytes); use a shorter --data", path, len(path))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
