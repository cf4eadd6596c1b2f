package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/blobsync/blobsync"
	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/fetcher"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// rawBenchID is the bare stream throughput is compared against.
const rawBenchID = "/blobsync/bench/raw/1.0.0"

// fill fills b with fast pseudo-random bytes (incompressible, unlike zeros).
func fill(b []byte, seed uint64) {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1})
	r.Read(b)
}

// throughput measures, over the transport of listen, a verified fetch of a
// blob of size bytes beside a bare libp2p stream carrying as many bytes from
// memory to nowhere, in rounds alternating which goes first. It returns both
// in MB/s.
func (b *bencher) throughput(listen string, size int64, rounds int) (fetchMBps, rawMBps float64, err error) {
	src, err := b.node(listen)
	if err != nil {
		return 0, 0, err
	}
	defer src.Close()
	data := make([]byte, size)
	fill(data, 1)
	ref, _, err := src.node.Put(b.ctx, bytes.NewReader(data), blobsync.PutOptions{Public: true})
	if err != nil {
		return 0, 0, err
	}
	src.host.SetStreamHandler(rawBenchID, func(s network.Stream) {
		s.SetDeadline(time.Now().Add(5 * time.Minute))
		for off := 0; off < len(data); off += 1 << 20 {
			if _, err := s.Write(data[off:min(off+1<<20, len(data))]); err != nil {
				s.Reset()
				return
			}
		}
		s.Close()
	})
	from := peer.AddrInfo{ID: src.host.ID(), Addrs: src.host.Addrs()}

	var fetchTime, rawTime time.Duration
	for round := range rounds {
		dst, dir, err := b.nodeDir(listen) // a fresh receiver each round: nothing held yet
		if err != nil {
			return 0, 0, err
		}
		if err := dst.host.Connect(b.ctx, from); err != nil {
			dst.Close()
			return 0, 0, err
		}
		raw := func() error {
			start := time.Now()
			n, err := readRaw(b.ctx, dst, src.host.ID())
			rawTime += time.Since(start)
			if err == nil && n != int64(len(data)) {
				err = fmt.Errorf("bare stream moved %d of %d bytes", n, len(data))
			}
			return err
		}
		fetch := func() error {
			start := time.Now()
			n, err := dst.node.Fetch(b.ctx, ref, blobsync.FetchOptions{From: []peer.AddrInfo{from}})
			fetchTime += time.Since(start)
			if err == nil && n != int64(len(data)) {
				err = fmt.Errorf("fetched %d of %d bytes", n, len(data))
			}
			return err
		}
		steps := []func() error{raw, fetch}
		if round%2 == 1 {
			steps[0], steps[1] = fetch, raw
		}
		for _, step := range steps {
			if err = step(); err != nil {
				break
			}
		}
		dst.Close()
		// Like a blob store that drops what it no longer needs: a run's
		// leftover 1 GiB files slow the next round's writes several-fold.
		os.RemoveAll(dir)
		if err != nil {
			return 0, 0, err
		}
	}
	moved := float64(rounds) * float64(len(data)) / 1e6
	return moved / fetchTime.Seconds(), moved / rawTime.Seconds(), nil
}

// readRaw reads a bare benchmark stream from p to its end.
func readRaw(ctx context.Context, r *runningNode, p peer.ID) (int64, error) {
	s, err := r.host.NewStream(ctx, p, rawBenchID)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(5 * time.Minute))
	s.CloseWrite()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := s.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

const benchSG = "/blobsync/sg/bench"

// group makes a device and servers, all in benchSG, the device knowing all.
func (b *bencher) group(servers int) (*runningNode, []*runningNode, error) {
	device, err := b.node("/ip4/127.0.0.1/tcp/0")
	if err != nil {
		return nil, nil, err
	}
	if _, err := device.node.CreateSyncgroup(b.ctx, benchSG, blobsync.ACL{Open: true}, blobsync.RoleNormal); err != nil {
		device.Close()
		return nil, nil, err
	}
	var out []*runningNode
	for range servers {
		s, err := b.node("/ip4/127.0.0.1/tcp/0")
		if err == nil {
			out = append(out, s)
			_, err = s.node.JoinSyncgroup(b.ctx, benchSG, peer.AddrInfo{ID: device.host.ID(), Addrs: device.host.Addrs()}, blobsync.RoleServer)
		}
		if err != nil {
			for _, n := range append(out, device) {
				n.Close()
			}
			return nil, nil, err
		}
	}
	return device, out, nil
}

// replication puts n 1 MiB blobs on a device, one at a time, and measures for
// each the time from the start of the put until 3 servers hold it verified.
func (b *bencher) replication(n int) (p50, p99 float64, err error) {
	device, servers, err := b.group(3)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		for _, s := range append(servers, device) {
			s.Close()
		}
	}()
	data := make([]byte, 1<<20)
	var took []time.Duration
	for i := range n {
		fill(data, uint64(100+i))
		start := time.Now()
		ref, _, err := device.node.Put(b.ctx, bytes.NewReader(data), blobsync.PutOptions{Syncgroups: []string{benchSG}})
		if err != nil {
			return 0, 0, err
		}
		for _, s := range servers {
			if err := waitHeld(b.ctx, s.node, ref, 30*time.Second); err != nil {
				return 0, 0, err
			}
		}
		took = append(took, time.Since(start))
	}
	return percentileMS(took, 50), percentileMS(took, 99), nil
}

// smallBlobs puts n blobs of 4 KiB into a syncgroup on a device, then lets a
// server join and measures how fast it holds them all.
func (b *bencher) smallBlobs(n int) (float64, error) {
	device, _, err := b.group(0)
	if err != nil {
		return 0, err
	}
	defer device.Close()
	data := make([]byte, 4096)
	for i := range n {
		binary.LittleEndian.PutUint64(data, uint64(i))
		fill(data[8:], uint64(i))
		if _, _, err := device.node.Put(b.ctx, bytes.NewReader(data), blobsync.PutOptions{Syncgroups: []string{benchSG}}); err != nil {
			return 0, err
		}
	}
	server, err := b.node("/ip4/127.0.0.1/tcp/0")
	if err != nil {
		return 0, err
	}
	defer server.Close()
	start := time.Now()
	if _, err := server.node.JoinSyncgroup(b.ctx, benchSG, peer.AddrInfo{ID: device.host.ID(), Addrs: device.host.Addrs()}, blobsync.RoleServer); err != nil {
		return 0, err
	}
	for deadline := start.Add(5 * time.Minute); server.node.Stats().BlobsFetched < int64(n); {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the server fetched %d of %d blobs in 5 minutes", server.node.Stats().BlobsFetched, n)
		}
		if err := b.ctx.Err(); err != nil {
			return 0, err
		}
		time.Sleep(time.Millisecond)
	}
	return float64(n) / since(start), nil
}

// nopStore is a fetcher.Store that keeps nothing.
type nopStore struct{}

func (nopStore) FetchAttempts(context.Context, datastore.Ref) (uint32, error)  { return 0, nil }
func (nopStore) SetFetchAttempts(context.Context, datastore.Ref, uint32) error { return nil }

func benchRef(i int) datastore.Ref {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return datastore.RefOf(b[:])
}

// fetcherPendingMiB measures the heap that n blobs pending in a Fetcher take
// (waiting out a backoff, so none is fetched meanwhile), BlobRefs included.
func fetcherPendingMiB(n int) (float64, error) {
	f, err := fetcher.New(func(context.Context, datastore.Ref) error { return nil }, nopStore{})
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var before, after runtime.MemStats
	// Twice: the first GC moves pooled buffers to their pools' victim
	// caches, the second frees them, so their release is not subtracted.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		f.StartWithAttempts(benchRef(i), 10)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(f)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if grown <= 0 {
		return 0, fmt.Errorf("the heap did not grow with %d pending blobs (%d bytes): something else was freed meanwhile", n, grown)
	}
	return float64(grown) / (1 << 20), nil
}

// fetcherSchedPerS measures how many blobs a Fetcher schedules, fetches (a
// fetch that returns at once) and retires per second.
func fetcherSchedPerS(ctx context.Context, n int) (float64, error) {
	refs := make([]datastore.Ref, n)
	for i := range refs {
		refs[i] = benchRef(i)
	}
	var done atomic.Int64
	finished := make(chan struct{})
	f, err := fetcher.New(func(context.Context, datastore.Ref) error {
		if done.Add(1) == int64(n) {
			close(finished)
		}
		return nil
	}, nopStore{}, fetcher.Concurrency(64))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	start := time.Now()
	for _, r := range refs {
		f.StartWithAttempts(r, 0)
	}
	select {
	case <-finished:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return float64(n) / since(start), nil
}

// percentileMS returns the p-th percentile of ds in milliseconds (nearest rank).
func percentileMS(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return float64(s[max(i-1, 0)].Microseconds()) / 1000
}
