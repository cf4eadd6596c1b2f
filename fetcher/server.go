package fetcher

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/blobsync/blobsync/datastore"
)

// Source is what the server loop reads of this peer's blobs and syncgroups.
type Source interface {
	// ScanWanted calls fn for every blob this peer should fetch (it is a
	// server of a syncgroup the blob was learned in, and does not hold it),
	// with the fetch attempts persisted in its signpost.
	ScanWanted(ctx context.Context, fn func(ref datastore.Ref, attempts uint32)) error
	// Wanted reports whether this peer should fetch ref.
	Wanted(ctx context.Context, ref datastore.Ref) (bool, error)
	// ListsPeer reports whether ref's signpost lists peer p (a libp2p peer ID
	// as a string) as a location.
	ListsPeer(ctx context.Context, ref datastore.Ref, p string) (bool, error)
}

// Server defaults (the seed's: Syncbase scanned 300 s + 4× the last scan's
// time apart; we scan at once at start and act on events in between).
const (
	DefaultScanExtra      = 300 * time.Second
	DefaultScanMultiplier = 4
)

type serverConfig struct {
	scanExtra      time.Duration
	scanMultiplier int
	clock          Clock
	log            *slog.Logger
}

// ServerOption configures a Server.
type ServerOption func(*serverConfig)

// ScanDelay sets the gap between full scans: extra + multiplier × the last
// scan's duration (defaults DefaultScanExtra, DefaultScanMultiplier).
func ScanDelay(extra time.Duration, multiplier int) ServerOption {
	return func(c *serverConfig) { c.scanExtra, c.scanMultiplier = extra, multiplier }
}

// ServerClock sets the clock (default RealClock).
func ServerClock(cl Clock) ServerOption { return func(c *serverConfig) { c.clock = cl } }

// ServerLogger sets the logger (default slog.Default()).
func ServerLogger(l *slog.Logger) ServerOption { return func(c *serverConfig) { c.log = l } }

// Server is the server loop: it gives its Fetcher every blob this peer should
// fetch — on a full scan at start, at once when a signpost changes, and on a
// periodic safety scan — and brings forward the blobs a peer that has just
// connected probably holds.
type Server struct {
	f   *Fetcher
	src Source
	cfg serverConfig

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	rescan chan struct{} // capacity 1
	events chan struct{} // capacity 1: changed or connected has news

	mu        sync.Mutex
	changed   []datastore.Ref
	connected map[string]bool
	lastScan  ScanStats
}

// ScanStats describes the last full scan.
type ScanStats struct {
	At      time.Time
	Took    time.Duration
	Started int // blobs given to the Fetcher
	Err     error
}

// NewServer starts the server loop for f; its first full scan starts at once.
func NewServer(f *Fetcher, src Source, opts ...ServerOption) (*Server, error) {
	cfg := serverConfig{scanExtra: DefaultScanExtra, scanMultiplier: DefaultScanMultiplier, clock: RealClock{}, log: slog.Default()}
	for _, o := range opts {
		o(&cfg)
	}
	if f == nil || src == nil || cfg.clock == nil || cfg.log == nil || cfg.scanExtra < 0 || cfg.scanMultiplier < 0 {
		return nil, errors.New("fetcher: NewServer needs a Fetcher, a Source, a clock, a logger and non-negative scan delays")
	}
	s := &Server{f: f, src: src, cfg: cfg, rescan: make(chan struct{}, 1), events: make(chan struct{}, 1), connected: map[string]bool{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Go(s.scanLoop)
	s.wg.Go(s.eventLoop)
	return s, nil
}

// Close stops the loop and waits for it. It does not close the Fetcher.
func (s *Server) Close() error {
	s.cancel()
	s.wg.Wait()
	return nil
}

// Rescan starts a full scan now (for example when this peer becomes a server).
func (s *Server) Rescan() {
	select {
	case s.rescan <- struct{}{}:
	default:
	}
}

// SignpostsChanged tells the loop that the signposts of refs appeared or
// changed. It never blocks: the work is done in the background.
func (s *Server) SignpostsChanged(refs []datastore.Ref) {
	s.mu.Lock()
	s.changed = append(s.changed, refs...)
	s.mu.Unlock()
	s.notify()
}

// PeerConnected tells the loop that peer p (a libp2p peer ID as a string)
// connected: blobs waiting out a backoff whose signposts list p are tried now.
func (s *Server) PeerConnected(p string) {
	s.mu.Lock()
	s.connected[p] = true
	s.mu.Unlock()
	s.notify()
}

func (s *Server) notify() {
	select {
	case s.events <- struct{}{}:
	default:
	}
}

// LastScan describes the last full scan.
func (s *Server) LastScan() ScanStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastScan
}

func (s *Server) scanLoop() {
	delay := time.Duration(0)
	for {
		t := s.cfg.clock.NewTimer(delay)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C():
		case <-s.rescan:
			t.Stop()
		}
		start := s.cfg.clock.Now()
		started := 0
		err := s.src.ScanWanted(s.ctx, func(ref datastore.Ref, attempts uint32) {
			s.f.StartWithAttempts(ref, attempts)
			started++
		})
		took := s.cfg.clock.Now().Sub(start)
		if err != nil && s.ctx.Err() == nil {
			s.cfg.log.Warn("fetcher: scan failed", "err", err)
		}
		s.mu.Lock()
		s.lastScan = ScanStats{At: start, Took: took, Started: started, Err: err}
		s.mu.Unlock()
		delay = s.cfg.scanExtra + time.Duration(s.cfg.scanMultiplier)*took
	}
}

func (s *Server) eventLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.events:
		}
		s.mu.Lock()
		changed, connected := s.changed, s.connected
		s.changed, s.connected = nil, map[string]bool{}
		s.mu.Unlock()
		s.onChanged(changed)
		s.onConnected(connected)
	}
}

// onChanged starts the blobs this peer now wants, and brings forward those
// already waiting: a changed signpost may name a new location.
func (s *Server) onChanged(refs []datastore.Ref) {
	for _, ref := range refs {
		wanted, err := s.src.Wanted(s.ctx, ref)
		if err != nil {
			s.cfg.log.Warn("fetcher: checking a changed signpost", "ref", ref, "err", err)
			continue
		}
		if !wanted {
			continue
		}
		if err := s.f.Start(s.ctx, ref); err != nil {
			s.cfg.log.Warn("fetcher: starting", "ref", ref, "err", err)
			continue
		}
		s.f.Expedite(ref)
	}
}

// onConnected brings forward the waiting blobs whose signposts list a peer
// that has just connected.
func (s *Server) onConnected(peers map[string]bool) {
	if len(peers) == 0 {
		return
	}
	var due []datastore.Ref
	for _, ref := range s.f.Waiting() {
		for p := range peers {
			if ok, err := s.src.ListsPeer(s.ctx, ref, p); err == nil && ok {
				due = append(due, ref)
				break
			}
		}
	}
	s.f.Expedite(due...)
}
