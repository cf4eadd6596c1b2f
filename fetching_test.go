package blobsync

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/test"
	"google.golang.org/protobuf/encoding/protodelim"
)

func TestServersFetchWithoutBeingAskedNormalMembersDoNot(t *testing.T) {
	device, server, normal := newNode(t), newNode(t), newNode(t)
	device.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, RoleNormal)
	server.JoinSyncgroup(t.Context(), testSG, addrInfo(device), RoleServer)
	normal.JoinSyncgroup(t.Context(), testSG, addrInfo(device), RoleNormal)
	waitFor(t, "the device to know both", func() bool { g, _ := device.Syncgroup(testSG); return len(g.Members) == 3 })

	var refs []Ref
	var datas [][]byte
	for range 5 {
		data := random(t, 300_000)
		ref, _, err := device.Put(t.Context(), bytes.NewReader(data), PutOptions{Syncgroups: []string{testSG}})
		if err != nil {
			t.Fatal(err)
		}
		refs, datas = append(refs, ref), append(datas, data)
	}
	for i, ref := range refs {
		waitFor(t, "the server to hold the blob", func() bool { _, ok, _ := server.Has(ref); return ok })
		if !bytes.Equal(readAll(t, server, ref), datas[i]) {
			t.Fatalf("server's copy of blob %d differs", i)
		}
	}
	// The normal member had every announcement the server had...
	waitFor(t, "the normal member to know the blobs", func() bool { return signpostOn(t, normal, refs[4]).HasSyncgroup(testSG) })
	// ...and fetched none of them.
	if list, _ := normal.List(t.Context()); len(list) != 0 {
		t.Fatalf("a normal member fetched %d blobs on its own", len(list))
	}
	if q := normal.FetchQueue(10); q.Pending != 0 {
		t.Fatalf("a normal member queued %d fetches", q.Pending)
	}
	// A blob is visible once verified; its fetch ends after the ownership exchange.
	waitFor(t, "the server's queue to drain", func() bool { return server.FetchQueue(10).Pending == 0 })
	if q := server.FetchQueue(10); q.LastScan.At.IsZero() {
		t.Fatalf("server's queue after fetching all: %+v", q)
	}
	if got := device.Stats().BytesSent; got != int64(5*300_000) {
		t.Fatalf("device sent %d bytes, want each blob once (%d)", got, 5*300_000)
	}
}

func TestConcurrentFetchesShareOneTransfer(t *testing.T) {
	a, b := newNode(t), newNode(t)
	data := random(t, 8<<20)
	ref, _, _ := a.Put(t.Context(), bytes.NewReader(data), PutOptions{Public: true})
	from := []peer.AddrInfo{addrInfo(a)}
	var wg sync.WaitGroup
	sizes, errs := make([]int64, 8), make([]error, 8)
	for i := range 8 {
		wg.Go(func() { sizes[i], errs[i] = b.Fetch(t.Context(), ref, FetchOptions{From: from}) })
	}
	wg.Wait()
	for i := range 8 {
		if errs[i] != nil || sizes[i] != int64(len(data)) {
			t.Fatalf("fetch %d: %d, %v", i, sizes[i], errs[i])
		}
	}
	if sent := a.Stats().BytesSent; sent != int64(len(data)) {
		t.Fatalf("8 concurrent fetches moved %d bytes, want one transfer of %d", sent, len(data))
	}
}

// TestCallerThatLeavesGetsNoMoreProgress: a caller that gives up on a shared
// transfer others keep going is not called again (review finding: the
// daemon's fetch handler then wrote to a finished HTTP response and crashed).
func TestCallerThatLeavesGetsNoMoreProgress(t *testing.T) {
	slow, b := newNode(t, WithProtocolOptions(protocol.UploadRate(4<<20))), newNode(t)
	data := random(t, 2<<20) // half a second at 4 MiB/s
	ref, _, _ := slow.Put(t.Context(), bytes.NewReader(data), PutOptions{Public: true})
	from := []peer.AddrInfo{addrInfo(slow)}

	stayed := make(chan error, 1)
	go func() { _, err := b.Fetch(t.Context(), ref, FetchOptions{From: from}); stayed <- err }()
	var returned atomic.Bool
	var after, calls atomic.Int64
	ctx, cancel := context.WithCancel(t.Context())
	_, err := b.Fetch(ctx, ref, FetchOptions{From: from, Progress: func(done, total int64) {
		if calls.Add(1) == 1 {
			cancel() // give up once the transfer is under way
		}
		if returned.Load() {
			after.Add(1)
		}
	}})
	returned.Store(true)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the leaving caller's Fetch: %v", err)
	}
	if err := <-stayed; err != nil { // the transfer went on to the end for the other caller
		t.Fatal(err)
	}
	if n := after.Load(); n > 0 {
		t.Fatalf("progress called %d times after its Fetch returned", n)
	}
	if !bytes.Equal(readAll(t, b, ref), data) {
		t.Fatal("bytes differ")
	}
}

// TestForgedHaveBlobAnswerCannotPoisonSignposts (review finding): a peer in
// no syncgroup answers HaveBlob with a signpost naming our group and four
// invented "servers" from the future. None of it is kept, and when the
// device announces the blob the server fetches it.
func TestForgedHaveBlobAnswerCannotPoisonSignposts(t *testing.T) {
	server, device, hostile := newNode(t), newNode(t), newNode(t)
	if _, err := server.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, RoleServer); err != nil {
		t.Fatal(err)
	}
	data := random(t, 100_000)
	ref := datastore.RefOf(data)
	hostile.h.SetStreamHandler(protocol.ID, func(s network.Stream) {
		sp := &pb.Signpost{SgIds: []string{testSG}}
		for range 4 {
			p, _ := test.RandPeerID()
			sp.Locations = append(sp.Locations, &pb.Location{Peer: []byte(p), WhenSeenUnixNano: time.Now().Add(time.Hour).UnixNano(), IsServer: true})
		}
		protodelim.MarshalTo(s, &pb.Response{Status: pb.Status_NOT_FOUND, Signpost: sp})
		s.Close()
	})
	if _, err := server.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{addrInfo(hostile)}}); !errors.Is(err, ErrNoLocation) {
		t.Fatalf("fetch from the liar: %v", err)
	}
	if sp := signpostOn(t, server, ref); !sp.IsZero() {
		t.Fatalf("the liar's signpost was kept: %+v", sp)
	}
	if _, err := device.JoinSyncgroup(t.Context(), testSG, addrInfo(server), RoleNormal); err != nil {
		t.Fatal(err)
	}
	putIn(t, device, data, testSG)
	waitFor(t, "the server to fetch the real blob", func() bool { _, held, _ := server.Has(ref); return held })
}

// TestRoleDowngradeStopsFetching (review finding): a server that rejoins its
// syncgroup as a normal member stops fetching the group's blobs.
func TestRoleDowngradeStopsFetching(t *testing.T) {
	s, m := newNode(t), newNode(t)
	s.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, RoleServer)
	m.JoinSyncgroup(t.Context(), testSG, addrInfo(s), RoleNormal)
	nowhere, _ := test.RandPeerID()
	ref := datastore.RefOf([]byte("held by a peer that does not exist"))
	if err := s.ProcessBlobRefs(t.Context(), testSG, nowhere, []Ref{ref}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a failed attempt", func() bool {
		q := s.FetchQueue(1)
		return q.Pending == 1 && len(q.Blobs) == 1 && q.Blobs[0].Attempts == 1 && !q.Blobs[0].InFlight
	})
	if _, err := s.JoinSyncgroup(t.Context(), testSG, addrInfo(m), RoleNormal); err != nil {
		t.Fatal(err)
	}
	s.fetcher.Expedite(ref)
	waitFor(t, "the queue to drop the blob", func() bool { return s.FetchQueue(1).Pending == 0 })
	if sp := signpostOn(t, s, ref); sp.FetchAttempts != 1 {
		t.Fatalf("the unwanted blob's attempt was counted: %d", sp.FetchAttempts)
	}
}
