package blobsync

import (
	"bytes"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
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
