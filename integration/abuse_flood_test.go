package integration

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
)

// TestAbuseStreamFlood: one peer opens 10,000 streams as fast as it can (a
// HaveBlob for a random ref; a frame left half-sent on an open stream; a
// stream that never even negotiates a protocol), then makes 5,000 HaveBlob
// requests, 64 at a time. The daemon refuses what is over its limits, its
// heap stays bounded, a well-behaved peer fetches a 2 MiB public blob during
// each flood, no blob byte goes to the attacker, and afterwards the daemon's
// goroutines come back to their baseline.
func TestAbuseStreamFlood(t *testing.T) {
	const (
		streams, streamWorkers = 10_000, 256
		requests, reqWorkers   = 5_000, 64
		maxHeap                = 256 << 20
		goroutineSlack         = 10
	)
	d, maddr := startVictim(t)
	good := startDaemon(t, tcpListen)
	warm, warmData := putBlob(t, d, 4096, "--public")
	blobA, dataA := putBlob(t, d, 2<<20, "--public")
	blobB, dataB := putBlob(t, d, 2<<20, "--public")
	after, afterData := putBlob(t, d, 4096, "--public")
	wellBehavedGet(t, good, d, warm, warmData) // the well-behaved peer is connected before the baseline
	a := newAttacker(t, d)
	unknown := rawFrame(&pb.Response{Status: pb.Status_NOT_FOUND})
	haveFrame := func() []byte { return rawFrame(&pb.Request{Op: pb.Op_HAVE_BLOB, Ref: unheldRef().Bytes()}) }
	if r := a.call(t, protocol.ID, haveFrame()); r.err != nil || !bytes.Equal(r.data, unknown) {
		t.Fatalf("HaveBlob of an unknown blob: %v; want %x", r, unknown)
	}
	baseline := 0.0
	for range 5 {
		baseline = max(baseline, metricOf(t, maddr, "go_goroutines"))
	}
	sent := metricOf(t, maddr, "blobsync_bytes_sent_total")
	samples := startMetricsSampler(maddr, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	// duringFlood runs a well-behaved peer's get of ref once the flood has
	// started, and reports whether it has ended.
	victimAddr := d.addr(t, "tcp")
	duringFlood := func(ref datastore.Ref, started <-chan struct{}) (func() bool, func() bgResult, string) {
		out := filepath.Join(t.TempDir(), "got")
		var res bgResult
		done := make(chan struct{})
		go func() {
			defer close(done)
			select {
			case <-started:
			case <-ctx.Done():
				res.err = ctx.Err()
				return
			}
			res = <-peerBackground(ctx, "get", ref.String(), "--from", victimAddr, "-o", out, "--data", good.dir)
		}()
		ended := func() bool {
			select {
			case <-done:
				return true
			default:
				return false
			}
		}
		return ended, func() bgResult { <-done; return res }, out
	}
	checkGet := func(what string, res bgResult, out string, want []byte) {
		t.Helper()
		if res.err != nil || res.code != 0 {
			t.Errorf("%s: the well-behaved peer's get failed: %v, exit %d: %s", what, res.err, res.code, res.stderr)
			return
		}
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: the well-behaved peer's copy differs (%v)", what, err)
		}
		t.Logf("%s: the well-behaved peer fetched 2 MiB in %v", what, res.took.Round(time.Millisecond))
	}

	// Phase 1: 10,000 streams.
	var streamOut [3]outcomeTally // by variant
	startedA := make(chan struct{})
	var startOnce sync.Once
	endedA, resultA, outA := duringFlood(blobA, startedA)
	begin := time.Now()
	n := floodWith(ctx, streamWorkers, streams, endedA, func(i int) {
		if i == streams/10 {
			startOnce.Do(func() { close(startedA) })
		}
		// How long each waits for an answer or a refusal, then resets.
		switch v := i % 3; v {
		case 0: // a whole HaveBlob
			streamOut[v].add(classifyReply(a.send(ctx, protocol.ID, haveFrame(), true, time.Second), unknown))
		case 1: // half a frame, the stream left open
			streamOut[v].add(classifyReply(a.send(ctx, protocol.ID, joinBytes(lenPrefix(40), []byte{1, 2, 3, 4, 5}), false, 500*time.Millisecond), nil))
		case 2: // not even a protocol
			streamOut[v].add(classifyReply(a.silent(ctx, 200*time.Millisecond), nil))
		}
	})
	floodTook := time.Since(begin)
	checkGet("during the stream flood", resultA(), outA, dataA)
	var limited, accepted int
	for v, what := range []string{"whole HaveBlob", "half-sent frame", "silent stream"} {
		c := &streamOut[v]
		t.Logf("stream flood, %s: %v", what, c)
		limited += c.get(floodLimited)
		accepted += c.get(floodAnswered) + c.get(floodHeld)
		if odd := c.total() - c.get(floodAnswered) - c.get(floodLimited) - c.get(floodReset) - c.get(floodHeld); odd != 0 {
			t.Errorf("stream flood, %s: %d streams had an unexpected outcome: %v", what, odd, c)
		}
	}
	t.Logf("stream flood: %d streams in %v; %d refused for resource limits, %d accepted (answered or held)", n, floodTook.Round(time.Millisecond), limited, accepted)
	if n < streams {
		t.Errorf("the flood opened %d streams; want %d", n, streams)
	}
	if limited == 0 {
		t.Error("the daemon refused none of the flood's streams for its limits")
	}

	// Phase 2: 5,000 HaveBlob requests, 64 at a time.
	var reqOut outcomeTally
	startedB := make(chan struct{})
	var startOnceB sync.Once
	endedB, resultB, outB := duringFlood(blobB, startedB)
	begin = time.Now()
	n = floodWith(ctx, reqWorkers, requests, endedB, func(i int) {
		if i == requests/10 {
			startOnceB.Do(func() { close(startedB) })
		}
		reqOut.add(classifyReply(a.send(ctx, protocol.ID, haveFrame(), true, 10*time.Second), unknown))
	})
	floodTook = time.Since(begin)
	checkGet("during the HaveBlob flood", resultB(), outB, dataB)
	t.Logf("HaveBlob flood: %d requests in %v: %v", n, floodTook.Round(time.Millisecond), &reqOut)
	if n < requests {
		t.Errorf("the flood made %d requests; want %d", n, requests)
	}
	if reqOut.get(floodAnswered)+reqOut.get(floodLimited)+reqOut.get(floodReset) != reqOut.total() {
		t.Errorf("HaveBlob flood: some requests got neither the unknown-blob answer nor a refusal: %v", &reqOut)
	}
	if reqOut.get(floodAnswered) == 0 {
		t.Error("HaveBlob flood: no request was answered")
	}

	heap, goroutines, nsamples, errs := samples.finish()
	t.Logf("during the floods (%d scrapes, %d failed): peak heap in use %.1f MiB, peak goroutines %.0f (baseline %.0f)", nsamples, errs, heap/(1<<20), goroutines, baseline)
	if nsamples == 0 || heap == 0 {
		t.Error("no /metrics scrape succeeded during the floods")
	}
	if heap > maxHeap {
		t.Errorf("the daemon's heap in use peaked at %.1f MiB; want under %d MiB", heap/(1<<20), maxHeap>>20)
	}
	if got := metricOf(t, maddr, "blobsync_bytes_sent_total") - sent; got != float64(len(dataA)+len(dataB)) {
		t.Errorf("the daemon sent %v blob bytes during the floods; want %d (the two 2 MiB gets)", got, len(dataA)+len(dataB))
	}

	// Afterwards: the goroutines return to the baseline, the daemon serves.
	deadline := time.Now().Add(30 * time.Second)
	settleStart := time.Now()
	var now float64
	for {
		now = metricOf(t, maddr, "go_goroutines")
		if now <= baseline+goroutineSlack {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the daemon's goroutines stay at %.0f after the floods; baseline %.0f", now, baseline)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("goroutines: baseline %.0f, peak %.0f, %.0f after %v", baseline, goroutines, now, time.Since(settleStart).Round(time.Millisecond))
	if r := a.call(t, protocol.ID, haveFrame()); r.err != nil || !bytes.Equal(r.data, unknown) {
		t.Errorf("HaveBlob after the floods: %v; want %x", r, unknown)
	}
	wellBehavedGet(t, good, d, after, afterData)
	checkSurvived(t, d)
}

// TestAbuseSilentStreamsDoNotStarveOtherPeers: one peer opens streams and
// never negotiates a protocol on them, as many as the daemon accepts, and
// holds them. Such streams sit in the resource manager's transient scope,
// which every peer's new streams pass through; what one peer may hold there
// must leave room for the others: a well-behaved peer's get still succeeds.
func TestAbuseSilentStreamsDoNotStarveOtherPeers(t *testing.T) {
	d, _ := startVictim(t)
	good := startDaemon(t, tcpListen)
	warm, warmData := putBlob(t, d, 4096, "--public")
	ref, data := putBlob(t, d, 256<<10, "--public")
	wellBehavedGet(t, good, d, warm, warmData) // connected before the attack
	a := newAttacker(t, d)

	// Open silent streams until the daemon refuses 50 in a row (or 3,000).
	var held []network.Stream
	defer func() {
		for _, st := range held {
			st.Reset()
		}
	}()
	refused, inARow := 0, 0
	var refusal error
	for len(held)+refused < 3000 && inARow < 50 {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		st, err := a.h.Network().NewStream(ctx, a.target)
		cancel()
		if err != nil {
			t.Fatalf("opening a stream: %v", err)
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		hdr := make([]byte, len(multistreamHeader))
		if _, err := io.ReadFull(st, hdr); err != nil || !bytes.Equal(hdr, multistreamHeader) {
			refused++
			inARow++
			refusal = err
			st.Reset()
			continue
		}
		inARow = 0
		held = append(held, st)
	}
	t.Logf("the daemon accepted %d silent streams from one peer and refused %d (%v)", len(held), refused, refusal)
	if refused == 0 {
		t.Fatalf("the daemon accepted %d silent streams from one peer and refused none", len(held))
	}

	out := filepath.Join(t.TempDir(), "got")
	r := peer(t, "get", ref.String(), "--from", d.addr(t, "tcp"), "-o", out, "--data", good.dir)
	if r.code != 0 {
		t.Errorf("while one peer holds %d silent streams, a well-behaved peer's get fails: %s", len(held), strings.TrimSpace(r.stderr))
	} else if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, data) {
		t.Errorf("the well-behaved peer's copy differs (%v)", err)
	}

	// Once the attacker lets go, the daemon serves again.
	for _, st := range held {
		st.Reset()
	}
	held = nil
	eventually(t, "the daemon to serve again", func() bool {
		return peer(t, "get", ref.String(), "--from", d.addr(t, "tcp"), "-o", out, "--data", good.dir).code == 0
	})
	checkSurvived(t, d)
}
