package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"text/tabwriter"
	"time"
)

// benchResult holds peer bench's figures; the JSON keys are the contract.
type benchResult struct {
	FetchMbps           float64 `json:"fetch_mbps"`      // MB/s (10^6 bytes), verified fetch over TCP
	RawStreamMbps       float64 `json:"raw_stream_mbps"` // MB/s, a bare libp2p stream, same transport
	FetchRatio          float64 `json:"fetch_ratio"`
	QuicFetchRatio      float64 `json:"quic_fetch_ratio"`
	ReplicationP50ms    float64 `json:"replication_p50_ms"`
	ReplicationP99ms    float64 `json:"replication_p99_ms"`
	SmallBlobsPerS      float64 `json:"small_blobs_per_s"`
	Fetcher1MPendingMiB float64 `json:"fetcher_1m_pending_mib"`
	FetcherSchedPerS    float64 `json:"fetcher_sched_per_s"`

	QuicFetchMbps     float64 `json:"quic_fetch_mbps"`
	QuicRawStreamMbps float64 `json:"quic_raw_stream_mbps"`
	Quick             bool    `json:"quick"`
	Sizes             struct {
		FetchBytes   int64 `json:"fetch_bytes"`
		Replications int   `json:"replications"`
		SmallBlobs   int   `json:"small_blobs"`
		Pending      int   `json:"pending"`
	} `json:"sizes"`
}

// benchSizes are how much each measurement moves.
type benchSizes struct {
	fetchBytes   int64
	rounds       int // throughput rounds over TCP, each a fetch and a bare stream
	quicRounds   int // likewise over QUIC (no target; a round takes over twice as long)
	replications int
	smallBlobs   int
	pending      int
	scheduled    int
}

// The throughput rounds alternate which transfer goes first, and their count
// is even: over 5 runs of 8 rounds here the fetch's ratio was 0.005–0.053
// higher (mean 0.034) in the rounds it went first. One round's ratio varies
// by 0.068 (sd over 64 rounds in 16 runs, with no part of it shared by the
// rounds of one run): a run of 4 rounds by 0.034, a run of 8 by 0.024.
var (
	fullSizes  = benchSizes{fetchBytes: 1 << 30, rounds: 8, quicRounds: 4, replications: 50, smallBlobs: 10_000, pending: 1_000_000, scheduled: 1_000_000}
	quickSizes = benchSizes{fetchBytes: 64 << 20, rounds: 2, quicRounds: 2, replications: 10, smallBlobs: 500, pending: 1_000_000, scheduled: 200_000}
)

func cmdBench(ctx context.Context, args []string, e env) error {
	c := newCommand("bench", e)
	quick := c.fs.Bool("quick", false, "a smoke run with small sizes (well under 30 s)")
	only := c.fs.String("only", "", "run one measurement: fetch, quic, replication, small or fetcher")
	cpuProfile := c.fs.String("cpuprofile", "", "write a CPU profile of the run to FILE")
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	if *only != "" && !slices.Contains([]string{"fetch", "quic", "replication", "small", "fetcher"}, *only) {
		return fmt.Errorf("%w: --only %q: want fetch, quic, replication, small or fetcher", errUsage, *only)
	}
	run := func(name string) bool { return *only == "" || *only == name }
	// measure is run, and starts a measurement on an empty heap, as in a
	// process of its own: the 1 GiB runs leave GiBs of garbage, which the
	// next one would otherwise grow into, page by fresh page (small blobs:
	// 1,338–1,606/s after them in one run, 2,400–2,610/s after them in
	// another process).
	measure := func(name string) bool {
		if !run(name) {
			return false
		}
		debug.FreeOSMemory()
		return true
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	sizes := fullSizes
	if *quick {
		sizes = quickSizes
	}
	tmp, err := os.MkdirTemp("", "blobsync-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// The nodes' directories made in tmp get names no run used before, and
	// ext4 spreads them over the disk by those names: without a journal, a
	// file created where many were deleted in the last minutes costs up to
	// 0.5 ms more, and the last run's nodes deleted 20,000 small-blob files
	// as it ended. In fixed places, a second run straight after another
	// replicated 1,270–1,710 small blobs/s (2,310–2,530 after dropping the
	// caches); spread, 2,190–3,170.
	spreadSubdirs(tmp)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	progress := func(format string, args ...any) {
		if !c.json {
			fmt.Fprintf(e.stderr, "bench: "+format+"\n", args...)
		}
	}

	var r benchResult
	r.Quick = *quick
	r.Sizes.FetchBytes, r.Sizes.Replications, r.Sizes.SmallBlobs, r.Sizes.Pending = sizes.fetchBytes, sizes.replications, sizes.smallBlobs, sizes.pending
	b := &bencher{ctx: ctx, dir: tmp, log: quiet}

	// Small blobs first: they create 20,000 files, and on ext4 without a
	// journal a file created soon after others were deleted (by the 1 GiB
	// runs) costs up to 0.5 ms more.
	if measure("small") {
		progress("%d blobs of 4 KiB to a server", sizes.smallBlobs)
		if r.SmallBlobsPerS, err = b.smallBlobs(sizes.smallBlobs); err != nil {
			return fmt.Errorf("bench: small blobs: %w", err)
		}
	}
	if measure("fetch") {
		progress("fetch vs bare stream, TCP, %s × %d", formatBytes(sizes.fetchBytes), sizes.rounds)
		if r.FetchMbps, r.RawStreamMbps, err = b.throughput("/ip4/127.0.0.1/tcp/0", sizes.fetchBytes, sizes.rounds); err != nil {
			return fmt.Errorf("bench: tcp throughput: %w", err)
		}
		r.FetchRatio = r.FetchMbps / r.RawStreamMbps
	}
	if measure("quic") {
		progress("fetch vs bare stream, QUIC, %s × %d", formatBytes(sizes.fetchBytes), sizes.quicRounds)
		if r.QuicFetchMbps, r.QuicRawStreamMbps, err = b.throughput("/ip4/127.0.0.1/udp/0/quic-v1", sizes.fetchBytes, sizes.quicRounds); err != nil {
			return fmt.Errorf("bench: quic throughput: %w", err)
		}
		r.QuicFetchRatio = r.QuicFetchMbps / r.QuicRawStreamMbps
	}
	if measure("replication") {
		progress("replication of 1 MiB to 3 servers × %d", sizes.replications)
		if r.ReplicationP50ms, r.ReplicationP99ms, err = b.replication(sizes.replications); err != nil {
			return fmt.Errorf("bench: replication: %w", err)
		}
	}
	if measure("fetcher") {
		progress("fetcher: %d pending, %d scheduled", sizes.pending, sizes.scheduled)
		mib, err := fetcherPendingMiB(sizes.pending)
		if err != nil {
			return fmt.Errorf("bench: fetcher: %w", err)
		}
		r.Fetcher1MPendingMiB = mib * 1_000_000 / float64(sizes.pending)
		if r.FetcherSchedPerS, err = fetcherSchedPerS(ctx, sizes.scheduled); err != nil {
			return fmt.Errorf("bench: fetcher: %w", err)
		}
	}

	if c.json {
		return writeJSON(e.stdout, r)
	}
	return printBench(e.stdout, r, run)
}

// printBench prints the figures as a table, each beside its target; those of
// measurements not run (--only) as "-".
func printBench(w io.Writer, r benchResult, ran func(measurement string) bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE\tTARGET\tMET\t")
	row := func(measurement, name string, v float64, target string, met *bool) {
		value, mark := "-", ""
		if ran(measurement) {
			value = fmt.Sprintf("%.2f", v)
			if met != nil {
				mark = map[bool]string{true: "yes", false: "NO"}[*met]
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", name, value, target, mark)
	}
	is := func(b bool) *bool { return &b }
	row("fetch", "fetch_mbps", r.FetchMbps, "", nil)
	row("fetch", "raw_stream_mbps", r.RawStreamMbps, "", nil)
	row("fetch", "fetch_ratio", r.FetchRatio, "≥ 0.85", is(r.FetchRatio >= 0.85))
	row("quic", "quic_fetch_mbps", r.QuicFetchMbps, "", nil)
	row("quic", "quic_raw_stream_mbps", r.QuicRawStreamMbps, "", nil)
	row("quic", "quic_fetch_ratio", r.QuicFetchRatio, "", nil)
	row("replication", "replication_p50_ms", r.ReplicationP50ms, "< 50", is(r.ReplicationP50ms < 50))
	row("replication", "replication_p99_ms", r.ReplicationP99ms, "< 250", is(r.ReplicationP99ms < 250))
	row("small", "small_blobs_per_s", r.SmallBlobsPerS, "≥ 2000", is(r.SmallBlobsPerS >= 2000))
	row("fetcher", "fetcher_1m_pending_mib", r.Fetcher1MPendingMiB, "< 512", is(r.Fetcher1MPendingMiB < 512))
	row("fetcher", "fetcher_sched_per_s", r.FetcherSchedPerS, "≥ 100000", is(r.FetcherSchedPerS >= 100_000))
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Quick {
		fmt.Fprintln(w, "(--quick: small sizes; figures are indicative)")
	}
	return nil
}

// bencher runs measurements on in-process nodes in dir.
type bencher struct {
	ctx context.Context
	dir string
	log *slog.Logger
	n   int
}

// node starts a node on listen in a fresh data directory.
func (b *bencher) node(listen string) (*runningNode, error) {
	n, _, err := b.nodeDir(listen)
	return n, err
}

// nodeDir starts a node on listen in a fresh data directory, of a name no
// earlier run used, and returns the directory too.
func (b *bencher) nodeDir(listen string) (*runningNode, string, error) {
	b.n++
	dir, err := os.MkdirTemp(b.dir, fmt.Sprintf("node%d-", b.n))
	if err != nil {
		return nil, "", err
	}
	if _, err := initDataDir(layout(dir)); err != nil {
		return nil, "", err
	}
	n, err := openNode(layout(dir), nodeOptions{listen: []string{listen}, budget: -1}, b.log)
	return n, dir, err
}

func since(t time.Time) float64 { return time.Since(t).Seconds() }
