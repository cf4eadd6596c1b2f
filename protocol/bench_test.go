package protocol

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// rawBenchID is a throwaway protocol that streams benchBlobSize bytes and closes.
const rawBenchID protocol.ID = "/blobsync/bench/raw/1.0.0"

const (
	benchBlobSize = 256 << 20
	rawChunk      = 1 << 20 // write and read size of the raw baseline
)

// BenchmarkFetchVsRawStream compares Client.Fetch of a 256 MiB blob (stream,
// BLAKE3 while writing a partial file, fsync, verify, rename) with a bare
// libp2p stream carrying as many bytes from memory to io.Discard, over one
// TCP+TLS+yamux loopback connection. Each iteration runs both, swapping their
// order every other iteration, so machine noise hits both alike. It reports
// raw_MB/s, fetch_MB/s and fetch/raw (the ratio of the two rates); ns/op is
// hidden because it would sum two different things.
func BenchmarkFetchVsRawStream(b *testing.B) {
	srv := newServing(b, false)
	data := randomBytes(b, benchBlobSize)
	ref := srv.put(b, data, true)
	srv.h.SetStreamHandler(rawBenchID, func(s network.Stream) {
		if err := serveRaw(s, data); err != nil {
			s.Reset()
			return
		}
		s.Close()
	})
	cl := newFetching(b, srv.h, false)
	ctx := b.Context()
	if err := cl.h.Connect(ctx, peer.AddrInfo{ID: srv.h.ID(), Addrs: srv.h.Addrs()}); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, rawChunk)

	raw := func() time.Duration {
		start := time.Now()
		n, err := readRaw(ctx, cl.h, srv.h.ID(), buf)
		d := time.Since(start)
		if err != nil || n != benchBlobSize {
			b.Fatalf("raw stream: %d bytes, %v; want %d", n, err, benchBlobSize)
		}
		return d
	}
	fetch := func() time.Duration {
		start := time.Now()
		n, err := cl.fetch(ctx, srv.h.ID(), ref, nil)
		d := time.Since(start)
		if err != nil || n != benchBlobSize {
			b.Fatalf("Fetch = %d, %v; want %d bytes", n, err, benchBlobSize)
		}
		b.StopTimer()
		defer b.StartTimer()
		if size, held, err := cl.store.Has(ref); err != nil || !held || size != benchBlobSize {
			b.Fatalf("after Fetch: held %v, size %d, %v; want %d bytes", held, size, err, benchBlobSize)
		}
		if err := cl.store.Delete(ref); err != nil { // so the next iteration transfers again
			b.Fatal(err)
		}
		return d
	}

	raw() // untimed warm-up: faults in buffers and pools on both sides

	var rawTotal, fetchTotal time.Duration
	iters := 0
	for b.Loop() {
		if iters%2 == 0 {
			rawTotal += raw()
			fetchTotal += fetch()
		} else {
			fetchTotal += fetch()
			rawTotal += raw()
		}
		iters++
	}
	if conns := cl.h.Network().ConnsToPeer(srv.h.ID()); len(conns) != 1 {
		b.Fatalf("%d connections to the server; both parts must share one", len(conns))
	}

	mb := float64(iters) * benchBlobSize / 1e6
	rawRate, fetchRate := mb/rawTotal.Seconds(), mb/fetchTotal.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rawRate, "raw_MB/s")
	b.ReportMetric(fetchRate, "fetch_MB/s")
	b.ReportMetric(fetchRate/rawRate, "fetch/raw")
}

// serveRaw writes data to s in rawChunk writes.
func serveRaw(s network.Stream, data []byte) error {
	if err := s.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		return err
	}
	for off := 0; off < len(data); off += rawChunk {
		if _, err := s.Write(data[off:min(off+rawChunk, len(data))]); err != nil {
			return err
		}
	}
	return nil
}

// readRaw opens a raw stream to p and reads it to EOF into buf, returning the
// byte count. It reads by hand: io.Copy to io.Discard would use 8 KiB reads.
func readRaw(ctx context.Context, h host.Host, p peer.ID, buf []byte) (int64, error) {
	s, err := h.NewStream(ctx, p, rawBenchID)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	if err := s.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		return 0, err
	}
	if err := s.CloseWrite(); err != nil {
		return 0, err
	}
	var total int64
	for {
		n, err := s.Read(buf)
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			s.Reset()
			return total, fmt.Errorf("after %d bytes: %w", total, err)
		}
	}
}
