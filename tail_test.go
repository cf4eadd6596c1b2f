package blobsync

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// ackHolder is a sender that serves blobs and then holds each
// acknowledgement until the test answers it.
type ackHolder struct {
	blobs  map[Ref][]byte
	acks   chan Ref              // an acknowledgement arrived
	answer map[Ref]chan struct{} // closed: answer it
}

func (a *ackHolder) handle(st network.Stream) {
	defer st.Close()
	r := bufio.NewReader(st)
	var req pb.Request
	if readFrame(r, &req) != nil {
		st.Reset()
		return
	}
	ref, err := datastore.RefFromBytes(req.GetRef())
	data, ok := a.blobs[ref]
	if err != nil || !ok || req.GetOp() != pb.Op_GET_BLOB {
		st.Reset()
		return
	}
	writeFrame(st, &pb.Response{Status: pb.Status_OK, Size: uint64(len(data))})
	st.Write(data)
	var ack pb.Request
	if readFrame(r, &ack) != nil || ack.GetOp() != pb.Op_ACCEPTED_BLOB_OWNERSHIP {
		st.Reset()
		return
	}
	a.acks <- ref
	<-a.answer[ref]
	writeFrame(st, &pb.Response{Status: pb.Status_OK, Keeping: true})
}

func readFrame(r *bufio.Reader, m proto.Message) error {
	n, err := binary.ReadUvarint(r)
	if err != nil || n > 1<<16 {
		return fmt.Errorf("frame of %d bytes: %v", n, err)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return proto.Unmarshal(b, m)
}

func writeFrame(st network.Stream, m proto.Message) {
	b, _ := proto.Marshal(m)
	st.Write(append(binary.AppendUvarint(nil, uint64(len(b))), b...))
}

// The server fetcher's fetch returns once the blob is verified: its install,
// acknowledgement and record follow behind, at most maxTails at once. A fetch
// past that bound waits for its whole flight, record included.
func TestBackgroundFetchReturnsAtVerifyAndFinishesBehind(t *testing.T) {
	holder := &ackHolder{blobs: map[Ref][]byte{}, acks: make(chan Ref, maxTails+1), answer: map[Ref]chan struct{}{}}
	var refs []Ref
	for i := range maxTails + 1 {
		data := []byte(fmt.Sprintf("blob %d, acknowledged late", i))
		ref := datastore.RefOf(data)
		refs = append(refs, ref)
		holder.blobs[ref], holder.answer[ref] = data, make(chan struct{})
	}
	sender := newHost(t)
	t.Cleanup(func() { sender.Close() })
	sender.SetStreamHandler(protocol.ID, holder.handle)
	from := FetchOptions{From: []peer.AddrInfo{{ID: sender.ID(), Addrs: sender.Addrs()}}}
	n := newNode(t)
	recorded := func(ref Ref) bool {
		meta, _, err := n.meta.BlobMeta(t.Context(), ref)
		return err == nil && !meta.Created.IsZero()
	}

	// maxTails fetches return with their acknowledgements unanswered.
	var wg sync.WaitGroup
	for _, ref := range refs[:maxTails] {
		wg.Go(func() {
			if size, err := n.fetch(t.Context(), ref, from, true); err != nil || size != int64(len(holder.blobs[ref])) {
				t.Errorf("fetch of %s: %d bytes, %v", ref, size, err)
			}
		})
	}
	wg.Wait()
	// Each is acknowledged once installed, and not recorded before the answer.
	for range maxTails {
		ref := <-holder.acks
		if !bytes.Equal(readAll(t, n, ref), holder.blobs[ref]) {
			t.Fatalf("blob %s differs", ref)
		}
		if recorded(ref) {
			t.Fatalf("blob %s recorded before its acknowledgement was answered", ref)
		}
	}

	// One more: no tail token is free, so it returns only with its flight,
	// after its own acknowledgement is answered and the blob recorded.
	last := refs[maxTails]
	done := make(chan error, 1)
	go func() { _, err := n.fetch(t.Context(), last, from, true); done <- err }()
	if ref := <-holder.acks; ref != last {
		t.Fatalf("acknowledgement of %s, want %s", ref, last)
	}
	close(holder.answer[last])
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !recorded(last) {
		t.Fatal("a fetch past maxTails returned before its record")
	}

	for _, ref := range refs[:maxTails] {
		close(holder.answer[ref])
	}
	waitFor(t, "every held acknowledgement to be recorded", func() bool {
		for _, ref := range refs {
			if !recorded(ref) {
				return false
			}
		}
		return len(n.tails) == 0
	})
}

// A blob verified, so taken by the server fetcher as fetched, that then
// fails to install goes back to the fetcher's queue as a failed attempt,
// counted in its signpost, and is fetched on the next.
func TestInstallFailingBehindTheFetcherIsRetried(t *testing.T) {
	device, server := newNode(t), newNode(t)
	if _, err := device.CreateSyncgroup(t.Context(), testSG, ACL{Open: true}, RoleNormal); err != nil {
		t.Fatal(err)
	}
	data := random(t, 5000)
	ref := datastore.RefOf(data)
	// The blob's shard directory is a link to nowhere: the rename into it fails.
	name := ref.String()
	shard := filepath.Join(server.blobs.Dir(), name[len(name)-3:len(name)-1])
	if err := os.Symlink(filepath.Join(t.TempDir(), "gone"), shard); err != nil {
		t.Fatal(err)
	}
	if _, err := server.JoinSyncgroup(t.Context(), testSG, addrInfo(device), RoleServer); err != nil {
		t.Fatal(err)
	}
	if _, _, err := device.Put(t.Context(), bytes.NewReader(data), PutOptions{Syncgroups: []string{testSG}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed install to be queued again", func() bool {
		q := server.FetchQueue(1)
		return q.Pending == 1 && len(q.Blobs) == 1 && q.Blobs[0].Attempts == 1 && !q.Blobs[0].InFlight && q.Blobs[0].LastError != ""
	})
	if q := server.FetchQueue(1); !strings.Contains(q.Blobs[0].LastError, "no such file or directory") {
		t.Fatalf("queued with error %q", q.Blobs[0].LastError)
	}
	if sp := signpostOn(t, server, ref); sp.FetchAttempts != 1 {
		t.Fatalf("signpost counts %d attempts, want 1", sp.FetchAttempts)
	}
	if _, held, _ := server.Has(ref); held {
		t.Fatal("held although its install failed")
	}
	if err := os.Remove(shard); err != nil {
		t.Fatal(err)
	}
	server.fetcher.Expedite(ref)
	waitFor(t, "the retry to fetch it", func() bool { _, held, _ := server.Has(ref); return held })
	if !bytes.Equal(readAll(t, server, ref), data) {
		t.Fatal("blob differs")
	}
	waitFor(t, "the queue to drain", func() bool { return server.FetchQueue(1).Pending == 0 && idle(server) })
}
