package blobsync

import (
	"bytes"
	"testing"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
)

// A crash after a fetch installed its blob but before it acknowledged the
// transfer and recorded the blob loses nothing: the next start finds the
// blob, acknowledges it to the sender, which hands over its share, and
// records it with that share.
func TestRestartFinishesAFetchCutOffAfterItsInstall(t *testing.T) {
	testRestartAfterInstall(t, false)
}

// A crash after the sender granted the share but before the fetcher recorded
// it loses no share either: acknowledging the same transfer again repeats
// the grant (and takes nothing more from the sender).
func TestRestartFinishesAFetchCutOffAfterItsAcknowledgement(t *testing.T) {
	testRestartAfterInstall(t, true)
}

func testRestartAfterInstall(t *testing.T, acknowledged bool) {
	device := newNode(t)
	fetcher, d, dir := newNodeParts(t)
	group(t, device, RoleLeaf, map[*Node]Role{fetcher: RoleNormal})
	data := random(t, 300_000)
	ref := putIn(t, device, data, testSG)
	waitFor(t, "the normal member to learn of the blob", func() bool { return len(signpostOn(t, fetcher, ref).Locations) > 0 })

	// The fetch as Node.fetchFrom makes it, up to the install: the crash
	// comes before acknowledge and recordFetched.
	got, err := fetcher.client.Fetch(t.Context(), device.h.ID(), ref, fetcher.blobs, protocol.GetOptions{Distance: fetcher.distances([]string{testSG})})
	if err != nil {
		t.Fatal(err)
	}
	if got.Offered[testSG] != 1 {
		t.Fatalf("the leaf offered %v; want 1 share in %s", got.Offered, testSG)
	}
	if meta, _, _ := fetcher.meta.BlobMeta(t.Context(), ref); !meta.Created.IsZero() || shares(t, fetcher, ref) != 0 {
		t.Fatalf("before the restart the blob is recorded: %+v", meta)
	}

	if acknowledged {
		if granted, _, err := fetcher.acknowledge(t.Context(), device.h.ID(), ref, got.Offered); err != nil || granted[testSG] != 1 {
			t.Fatalf("acknowledge = %v, %v; want 1 share granted", granted, err)
		}
		if got := shares(t, device, ref); got != datastore.InitialShares-1 {
			t.Fatalf("the device holds %d shares after granting one", got)
		}
	}
	if err := fetcher.Close(); err != nil {
		t.Fatal(err)
	}
	restarted, err := New(fetcher.h, d, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restarted.Close() })
	waitFor(t, "the restarted node to record the blob", func() bool {
		meta, _, _ := restarted.meta.BlobMeta(t.Context(), ref)
		return !meta.Created.IsZero()
	})
	meta, _, err := restarted.meta.BlobMeta(t.Context(), ref)
	if err != nil || meta.Size != int64(len(data)) || meta.Shares[testSG] != 1 {
		t.Fatalf("recovered metadata %+v, %v; want %d bytes and 1 share in %s", meta, err, len(data), testSG)
	}
	if got := shares(t, device, ref); got != datastore.InitialShares-1 {
		t.Fatalf("the device holds %d shares after the recovered hand-over, want %d", got, datastore.InitialShares-1)
	}
	if dm, _, _ := device.meta.BlobMeta(t.Context(), ref); len(dm.Holders) != 1 || dm.Holders[0] != fetcher.h.ID() {
		t.Fatalf("the device's holders of the blob: %v", dm.Holders)
	}
	if !bytes.Equal(readAll(t, restarted, ref), data) {
		t.Fatal("the recovered blob's bytes differ")
	}
}
