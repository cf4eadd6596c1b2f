package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The fault suite: real daemons on 127.0.0.1 killed, restarted, starved of
// disk and cut off from each other, each scenario ending with
// checkInvariants. A device creates an open syncgroup and puts blobs into it;
// a server joins it with --role server and fetches them on its own.

const faultSG = "/blobsync/sg/faults"

// metricsFlags are the daemon flags of every daemon checkInvariants measures.
var metricsFlags = []string{"--metrics", "127.0.0.1:0"}

// transport is what daemons listen on and join through: a multiaddr's
// transport name and a listen address.
type transport struct{ name, listen string }

var (
	overTCP  = transport{"tcp", tcpListen}
	overQUIC = transport{"quic-v1", quicListen}
)

// startChecked starts a daemon on TCP in a new data directory with metrics,
// and records its idle baseline.
func startChecked(t *testing.T) *daemon {
	t.Helper()
	return startCheckedOn(t, overTCP)
}

func startCheckedOn(t *testing.T, tp transport) *daemon {
	t.Helper()
	d := startDaemonWith(t, metricsFlags, tp.listen)
	markIdle(t, d)
	return d
}

// runChecked runs a daemon on TCP with metrics on an initialized data
// directory; on the directory's first run it records the idle baseline.
func runChecked(t *testing.T, dir string) *daemon {
	t.Helper()
	return runCheckedOn(t, dir, overTCP)
}

func runCheckedOn(t *testing.T, dir string, tp transport) *daemon {
	t.Helper()
	d := runDaemonWith(t, dir, metricsFlags, tp.listen)
	idleMu.Lock()
	_, known := idle[dir]
	idleMu.Unlock()
	if !known {
		markIdle(t, d)
	}
	return d
}

// rateLimited initializes a data directory whose daemon sends at most rate
// bytes per second.
func rateLimited(t *testing.T, rate int) string {
	t.Helper()
	dir := newDataDir(t)
	setConfig(t, dir, map[string]any{"max_upload_rate": rate})
	return dir
}

func joinAs(t *testing.T, d, via *daemon, role string) {
	t.Helper()
	joinOver(t, d, via, role, overTCP)
}

func joinOver(t *testing.T, d, via *daemon, role string, tp transport) {
	t.Helper()
	ok(t, "sg", "join", faultSG, "--via", via.addr(t, tp.name), "--role", role, "--data", d.dir)
}

func createGroup(t *testing.T, device *daemon) {
	t.Helper()
	ok(t, "sg", "create", faultSG, "--open", "--data", device.dir)
}

// putSG puts the file at path on d into the fault syncgroup.
func putSG(t *testing.T, d *daemon, path string) string {
	t.Helper()
	return strings.TrimSpace(ok(t, "put", path, "--sg", faultSG, "--data", d.dir))
}

// seededFile writes size bytes drawn from rng to a new file.
func seededFile(t *testing.T, rng *rand.Rand, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size+7)
	for i := 0; i < size; i += 8 {
		binary.LittleEndian.PutUint64(data[i:], rng.Uint64())
	}
	data = data[:size]
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// kill9 kills d with SIGKILL and waits for it to be gone.
func kill9(t *testing.T, d *daemon) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon %s survived SIGKILL", d.dir)
	}
}

// within polls cond every 100 ms until it holds, failing the test after
// limit; it returns how long it took.
func within(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

// verifyHeld checks that d holds ref with exactly data.
func verifyHeld(t *testing.T, d *daemon, ref string, data []byte) {
	t.Helper()
	r := peer(t, "get", ref, "--data", d.dir)
	if r.code != 0 || !bytes.Equal([]byte(r.stdout), data) {
		t.Fatalf("%s's copy of %s: exit %d, %d bytes (want %d identical): %s", d.dir, ref, r.code, len(r.stdout), len(data), r.stderr)
	}
}

// allHeld waits at most limit for d to hold every blob of want (BlobRef →
// bytes), checks their bytes and returns how long it waited.
func allHeld(t *testing.T, d *daemon, want map[string][]byte, limit time.Duration, what string) time.Duration {
	t.Helper()
	took := within(t, limit, what, func() bool {
		for ref := range want {
			if !held(t, d, ref) {
				return false
			}
		}
		return true
	})
	for ref, data := range want {
		verifyHeld(t, d, ref, data)
	}
	return took
}

// attemptsMetrics returns the server fetcher's attempts counted in d's
// /metrics: the successful ones, and all.
func attemptsMetrics(t *testing.T, d *daemon) (okAttempts, all float64) {
	t.Helper()
	for name, v := range scrape(t, fullStatusOf(t, d).Metrics) {
		if strings.HasPrefix(name, "blobsync_fetch_attempts_total{") {
			all += v
			if name == `blobsync_fetch_attempts_total{result="ok"}` {
				okAttempts = v
			}
		}
	}
	return okAttempts, all
}

// transfer is a device and a server of the fault syncgroup, the server in
// the middle of fetching the device's blob ref.
type transfer struct {
	device, server *daemon
	ref            string
	data           []byte
}

// startTransfer starts a device on deviceDir (rate-limited, so the transfer
// takes a while) and a server, both on tp, puts a blob of size bytes drawn
// from rng on the device, and returns once the server's partial file holds
// at least atLeast bytes of it.
func startTransfer(t *testing.T, tp transport, deviceDir string, rng *rand.Rand, size, atLeast int64) transfer {
	t.Helper()
	device := runCheckedOn(t, deviceDir, tp)
	server := startCheckedOn(t, tp)
	createGroup(t, device)
	joinOver(t, server, device, "server", tp)
	path, data := seededFile(t, rng, int(size))
	ref := putSG(t, device, path)
	within(t, 20*time.Second, fmt.Sprintf("the server's partial file to pass %d bytes", atLeast), func() bool {
		n, found := fullStatusOf(t, server).partial(ref)
		return found && n >= atLeast
	})
	return transfer{device: device, server: server, ref: ref, data: data}
}

// TestFaultServingPeerKilledMidTransfer: the device serving a blob is killed
// with SIGKILL mid-transfer; the server keeps its partial file, counts the
// failed attempt, and when the device comes back (same data directory)
// resumes from the partial file instead of starting over. Over TCP the kill
// resets the connection; over QUIC nothing tells the server, and the stall
// deadline (30 s without a byte) or QUIC's idle timeout must end the attempt.
func TestFaultServingPeerKilledMidTransfer(t *testing.T) {
	for _, tp := range []transport{overTCP, overQUIC} {
		t.Run(tp.name, func(t *testing.T) { servingPeerKilledMidTransfer(t, tp) })
	}
}

func servingPeerKilledMidTransfer(t *testing.T, tp transport) {
	const size = 16 << 20
	rng := rand.New(rand.NewPCG(1, 1))
	deviceDir := rateLimited(t, 4<<20) // the blob takes 4 s
	tr := startTransfer(t, tp, deviceDir, rng, size, size/2)
	device, server, ref, data := tr.device, tr.server, tr.ref, tr.data
	kill9(t, device)
	killed := time.Now()

	// The attempt fails with the device gone and waits out its backoff; what
	// arrived stays in the partial file.
	var st fullStatus
	within(t, 45*time.Second, "the failed attempt to be counted", func() bool {
		st = fullStatusOf(t, server)
		b, found := st.queued(ref)
		return found && b.Attempts >= 1 && !b.InFlight
	})
	kept, found := st.partial(ref)
	if !found || kept < size/2 || kept >= size {
		t.Fatalf("after the device died the server's partial file holds %d bytes (present %v) of %d", kept, found, size)
	}
	if held(t, server, ref) {
		t.Fatal("the server holds the blob its only source died in the middle of")
	}

	t.Logf("over %s the attempt failed %v after the kill", tp.name, time.Since(killed).Round(100*time.Millisecond))
	restarted := runCheckedOn(t, deviceDir, tp)
	within(t, 20*time.Second, "the server to finish from the restarted device", func() bool { return held(t, server, ref) })
	verifyHeld(t, server, ref, data)
	st = fullStatusOf(t, server)
	// Resuming moves exactly the blob once in all; starting over would move
	// size + kept (≥ 1.5× the blob).
	if got := st.Transfers.BytesReceived; got > size+kept/2 {
		t.Errorf("the server received %d bytes for a %d-byte blob of which it kept %d: it started over instead of resuming", got, size, kept)
	}
	if len(st.Partials) != 0 {
		t.Errorf("partial files left after the blob arrived: %+v", st.Partials)
	}
	t.Logf("kept %d bytes when the device died; %d received in all for the %d-byte blob", kept, st.Transfers.BytesReceived, size)
	checkInvariants(t, server, restarted, device)
}

// TestFaultServerKilledRepeatedly kills the fetching server with SIGKILL at
// random moments, again and again, while the device keeps putting blobs.
// After every kill the blob store holds only verified blobs and the daemon
// starts again; what it holds and the attempts it counted never go back; in
// the end every blob arrives intact.
func TestFaultServerKilledRepeatedly(t *testing.T) {
	const iterations = 20
	seed := time.Now().UnixNano()
	if s := os.Getenv("BLOBSYNC_FAULT_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("BLOBSYNC_FAULT_SEED: %v", err)
		}
	}
	t.Logf("seed %d (BLOBSYNC_FAULT_SEED=%d replays the sizes and kill times)", seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 2))

	device := runChecked(t, rateLimited(t, 8<<20)) // blobs of up to 4 MiB take up to 0.5 s
	serverDir := newDataDir(t)
	server := runChecked(t, serverDir)
	createGroup(t, device)
	joinAs(t, server, device, "server")

	// A blob whose only holder is gone, announced while the server was
	// down: every attempt at it fails, so there are attempt counts that
	// must survive the kills.
	server.stop(t)
	ghost := startDaemon(t, tcpListen)
	joinAs(t, ghost, device, "normal")
	gpath, _ := seededFile(t, rng, 1000)
	ghostRef := putSG(t, ghost, gpath)
	eventually(t, "the device to hold the ghost's announcement", func() bool { return entries(t, device) == entries(t, ghost) })
	ghost.stop(t)
	first := server
	server = runChecked(t, serverDir)
	instances := []*daemon{first, server}
	within(t, 20*time.Second, "a failed attempt at the ghost's blob", func() bool {
		b, found := fullStatusOf(t, server).queued(ghostRef)
		return found && b.Attempts >= 1
	})

	want := map[string][]byte{}
	maxHeld, midTransfer := 0, 0
	maxAttempts := map[string]uint32{}
	observe := func(i int, when string, st fullStatus) {
		t.Helper()
		if st.Blobs < maxHeld {
			t.Errorf("iteration %d, %s: the server holds %d blobs, it held %d before", i, when, st.Blobs, maxHeld)
		}
		maxHeld = max(maxHeld, st.Blobs)
		for _, b := range st.FetchQueue.Blobs {
			if b.Attempts < maxAttempts[b.Ref] {
				t.Errorf("iteration %d, %s: %s has %d attempts, it had %d before", i, when, b.Ref, b.Attempts, maxAttempts[b.Ref])
			}
			maxAttempts[b.Ref] = max(maxAttempts[b.Ref], b.Attempts)
		}
	}
	for i := range iterations {
		path, data := seededFile(t, rng, 1+rng.IntN(4<<20))
		ref := putSG(t, device, path)
		want[ref] = data
		observe(i, "before the kill", fullStatusOf(t, server))
		time.Sleep(time.Duration(rng.Int64N(int64(600 * time.Millisecond))))
		kill9(t, server)
		checkBlobStore(t, serverDir)
		for _, e := range mustReadDir(t, filepath.Join(serverDir, "blobs", "partial")) {
			if fi, err := e.Info(); err == nil && fi.Size() > 0 && e.Name() != ghostRef {
				midTransfer++
				break
			}
		}

		server = runChecked(t, serverDir) // fails the test unless the datastore opens
		instances = append(instances, server)
		var st fullStatus
		within(t, 10*time.Second, "the restarted server's first scan", func() bool {
			st = fullStatusOf(t, server)
			return !st.FetchQueue.LastScan.At.IsZero()
		})
		observe(i, "after the restart", st)
		if _, found := st.queued(ghostRef); !found {
			t.Errorf("iteration %d: after the restart the ghost's blob is not in the fetch queue: %+v", i, st.FetchQueue)
		}
		if t.Failed() {
			t.FailNow()
		}
	}

	allHeld(t, server, want, 60*time.Second, "every blob to reach the server")
	st := fullStatusOf(t, server)
	if b, found := st.queued(ghostRef); !found || b.Attempts < maxAttempts[ghostRef] {
		t.Errorf("the ghost's blob: %+v (present %v), had %d attempts", b, found, maxAttempts[ghostRef])
	}
	if len(st.Partials) != 0 {
		t.Errorf("with every blob held or unreachable, partial files are left: %+v", st.Partials)
	}
	if midTransfer == 0 {
		t.Errorf("none of the %d kills landed mid-transfer: the resume after a kill went untested (BLOBSYNC_FAULT_SEED replays the run)", iterations)
	}
	t.Logf("%d kills, %d of them mid-transfer (a partial file with bytes in place); the server holds %d blobs; the ghost's blob has %d attempts",
		iterations, midTransfer, st.Blobs, maxAttempts[ghostRef])
	checkInvariants(t, append(instances, device, ghost)...)
}
