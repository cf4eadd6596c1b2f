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
	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/fetcher"
	"github.com/blobsync/blobsync/p2p"
	"github.com/blobsync/blobsync/protocol"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func cmdDaemon(ctx context.Context, args []string, e env) error {
	c := newCommand("daemon", e)
	var listen, bootstrap stringList
	c.fs.Var(&listen, "listen", "multiaddr to listen on (repeatable; default: config.json)")
	c.fs.Var(&bootstrap, "bootstrap", "DHT bootstrap peer, a multiaddr ending in /p2p/<id> (repeatable; added to config.json's)")
	dhtServer := c.fs.Bool("dht-server", false, "answer DHT queries for others even when serving no syncgroup")
	metricsAddr := c.fs.String("metrics", "", "serve Prometheus metrics at http://HOST:PORT/metrics")
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
	if *metricsAddr != "" {
		if _, _, err := net.SplitHostPort(*metricsAddr); err != nil {
			return fmt.Errorf("%w: --metrics %q: want HOST:PORT", errUsage, *metricsAddr)
		}
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	for _, b := range bootstrap {
		if _, err := parsePeerAddr(b); err != nil {
			return fmt.Errorf("%w: --bootstrap: %v", errUsage, err)
		}
	}
	return runDaemon(ctx, layout(c.dataDir), nodeOptions{listen: listen, bootstrap: bootstrap, dhtServer: *dhtServer, budget: budget, metrics: *metricsAddr}, log)
}

// nodeOptions are the daemon's flags that override or add to config.json.
type nodeOptions struct {
	listen    []string // replaces config.json's
	bootstrap []string // added to config.json's
	dhtServer bool     // or config.json's
	budget    int64    // replaces config.json's unless negative
	metrics   string   // HOST:PORT to serve Prometheus metrics on; "" for none
}

// runDaemon runs a node on the data directory until ctx is cancelled, then
// shuts down: the control API, the node, the host and the datastore, in order.
func runDaemon(ctx context.Context, l layout, opts nodeOptions, log *slog.Logger) error {
	rt, err := openNode(l, opts, log)
	if err != nil {
		return err
	}
	defer rt.Close()
	h := rt.node.Host()

	ln, err := listenSocket(l.socket())
	if err != nil {
		return err
	}
	defer ln.Close() // closed by the server once it serves; here for the returns before
	defer os.Remove(l.socket())
	a := &api{node: rt.node, dht: rt.dht, log: log, started: time.Now()}
	if opts.metrics != "" {
		addr, stop, err := serveMetrics(opts.metrics, rt.node, log)
		if err != nil {
			return err
		}
		defer stop()
		a.metrics = addr
		log.Info("metrics", "url", "http://"+addr+"/metrics")
	}
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

// runningNode is a node with the DHT, host and datastore it runs on.
type runningNode struct {
	node *blobsync.Node
	host host.Host // the routed host the node uses
	dht  *p2p.DHT
	ds   *leveldb.Datastore
}

// openNode starts the node of an initialized data directory with config.json
// as opts amend it.
func openNode(l layout, opts nodeOptions, log *slog.Logger) (*runningNode, error) {
	cfg, err := loadConfig(l)
	if err != nil {
		return nil, err
	}
	if len(opts.listen) > 0 {
		cfg.Listen = opts.listen
	}
	if opts.budget < 0 {
		opts.budget = cfg.Limits.MaxStorage
	}
	addrs, err := parseAddrs(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: --listen: %v", errUsage, err)
	}
	var bootstrap []peer.AddrInfo
	for _, b := range append(cfg.Bootstrap, opts.bootstrap...) {
		ai, err := parsePeerAddr(b)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		bootstrap = append(bootstrap, ai)
	}
	key, err := p2p.LoadOrCreateIdentity(l.identity())
	if err != nil {
		return nil, err
	}
	d, err := openDatastore(l.datastore())
	if err != nil {
		if strings.Contains(err.Error(), "resource temporarily unavailable") {
			return nil, fmt.Errorf("another daemon is already running on %s", l)
		}
		return nil, fmt.Errorf("datastore: %w", err)
	}
	dhtServer := opts.dhtServer || cfg.DHTServer
	if !dhtServer { // a server of any syncgroup answers DHT queries
		dhtServer, err = servesAGroup(d)
		if err != nil {
			d.Close()
			return nil, err
		}
	}
	perPeer := cfg.Limits.InboundStreamsPerPeer
	h, err := p2p.New(key,
		p2p.ListenAddrs(addrs...),
		p2p.WithProtocolLimit(protocol.ID, p2p.ProtocolLimit{
			InboundStreamsPerPeer: perPeer,
			InboundStreams:        16 * perPeer,
			MemoryPerPeer:         64 << 20, // yamux grows a fast stream's window to 16 MiB
			Memory:                512 << 20,
		}),
		p2p.WithServiceLimit(protocol.SgServiceName, p2p.ProtocolLimit{
			InboundStreamsPerPeer: perPeer,
			InboundStreams:        16 * perPeer,
			MemoryPerPeer:         2 * protocol.MaxSgFrameSize,
			Memory:                16 * protocol.MaxSgFrameSize,
		}),
		p2p.UserAgent("blobsync-peer"),
		p2p.Metrics(opts.metrics != ""),
	)
	if err != nil {
		d.Close()
		return nil, err
	}
	dht, err := p2p.NewDHT(context.Background(), h, dhtServer, bootstrap)
	if err != nil {
		h.Close()
		d.Close()
		return nil, err
	}
	routed := dht.Routed(h)
	node, err := blobsync.New(routed, d, l.blobs(),
		blobsync.WithLogger(log),
		blobsync.WithProtocolOptions(protocol.MaxBlobSize(cfg.Limits.MaxBlobSize), protocol.UploadRate(cfg.Limits.MaxUploadRate)),
		blobsync.WithFetcherOptions([]fetcher.Option{fetcher.Concurrency(cfg.Limits.FetchConcurrency)}),
		blobsync.WithStorageBudget(opts.budget),
		blobsync.WithDiscovery(dht, blobsync.DefaultProvideInterval))
	if err != nil {
		dht.Close()
		h.Close()
		d.Close()
		return nil, err
	}
	return &runningNode{node: node, host: routed, dht: dht, ds: d}, nil
}

// servesAGroup reports whether the datastore records this peer as a server
// of some syncgroup.
func servesAGroup(d *leveldb.Datastore) (bool, error) {
	groups, err := datastore.NewMetaStore(d).Groups(context.Background())
	if err != nil {
		return false, err
	}
	for _, g := range groups {
		if g.MyRole == datastore.RoleServer {
			return true, nil
		}
	}
	return false, nil
}

// Close stops the node, then the DHT, the host and the datastore.
func (r *runningNode) Close() error {
	return errors.Join(r.node.Close(), r.dht.Close(), r.host.Close(), r.ds.Close())
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

// serveMetrics serves the node's metrics, with go-libp2p's and the Go
// runtime's, at http://addr/metrics. It returns the address it listens on
// (addr may give port 0) and a function that stops it.
func serveMetrics(addr string, node *blobsync.Node, log *slog.Logger) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--metrics: %w", err)
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(node.Collector()); err != nil {
		ln.Close()
		return "", nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{reg, prometheus.DefaultGatherer}, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Close() }, nil
}
