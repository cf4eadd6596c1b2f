package blobsync

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// A location that starts a transfer and then stalls is cut off by the stall
// deadline, and the fetch goes on to the next location, which resumes after
// the bytes the staller sent: the blob arrives whole and verified, and the
// stalled stream is reset.
func TestStalledLocationIsCutOffAndTheNextResumes(t *testing.T) {
	data := random(t, 1<<20)
	const sent = 100_000
	honest := newNode(t)
	ref, _, err := honest.Put(t.Context(), bytes.NewReader(data), PutOptions{Public: true})
	if err != nil {
		t.Fatal(err)
	}

	staller := newHost(t)
	t.Cleanup(func() { staller.Close() })
	reset := make(chan error, 1)
	staller.SetStreamHandler(protocol.ID, func(st network.Stream) {
		hdr, _ := proto.Marshal(&pb.Response{Status: pb.Status_OK, Size: uint64(len(data))})
		st.Write(append(binary.AppendUvarint(nil, uint64(len(hdr))), hdr...))
		st.Write(data[:sent])
		// Then silence, until the fetcher gives up and resets the stream.
		_, err := st.Read(make([]byte, 1<<10))
		for err == nil {
			_, err = st.Read(make([]byte, 1<<10))
		}
		reset <- err
	})

	b := newNode(t, WithProtocolOptions(protocol.StallTimeout(300*time.Millisecond, 1)))
	stallerInfo := peer.AddrInfo{ID: staller.ID(), Addrs: staller.Addrs()}
	size, err := b.Fetch(t.Context(), ref, FetchOptions{From: []peer.AddrInfo{stallerInfo, addrInfo(honest)}})
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Fetch past a stalled location: %d bytes, %v", size, err)
	}
	if !bytes.Equal(readAll(t, b, ref), data) {
		t.Fatal("the fetched bytes differ")
	}
	select {
	case err := <-reset:
		t.Logf("the stalled stream ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled stream was never closed")
	}
	if got := honest.server.Stats().BytesSent; got != int64(len(data)-sent) {
		t.Fatalf("the next location sent %d bytes; the resume after the staller's %d should need %d", got, sent, len(data)-sent)
	}
}
