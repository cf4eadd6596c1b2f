package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
)

// unheldRef is the BlobRef of random bytes: a blob nobody holds.
func unheldRef() datastore.Ref {
	b := make([]byte, 32)
	rand.Read(b)
	return datastore.RefOf(b)
}

// randomBlobFile writes size random bytes to a file and returns its path and bytes.
func randomBlobFile(t *testing.T, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	f, err := os.CreateTemp(t.TempDir(), "blob-")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name(), data
}

// putBlob stores a new random blob of size bytes on d with the given put flags
// and returns its BlobRef and bytes.
func putBlob(t *testing.T, d *daemon, size int, flags ...string) (datastore.Ref, []byte) {
	t.Helper()
	path, data := randomBlobFile(t, size)
	out := ok(t, append([]string{"put", path, "--data", d.dir}, flags...)...)
	ref, err := datastore.ParseRef(strings.TrimSpace(out))
	if err != nil || ref != datastore.RefOf(data) {
		t.Fatalf("put printed %q (%v), want %s", out, err, datastore.RefOf(data))
	}
	return ref, data
}

// startVictim starts the daemon under attack, with /metrics, and returns it
// with its metrics address. After the test (and the attackers' own cleanups,
// registered later) the daemon is held to checkInvariants: verified blobs
// only, its idle goroutines and fds, no panic.
func startVictim(t *testing.T) (*daemon, string) {
	t.Helper()
	d := startChecked(t)
	t.Cleanup(func() { checkInvariants(t, d) })
	var st struct{ Metrics string }
	if err := json.Unmarshal([]byte(ok(t, "status", "--json", "--data", d.dir)), &st); err != nil || st.Metrics == "" {
		t.Fatalf("status names no metrics address: %+v, %v", st, err)
	}
	return d, st.Metrics
}

// metricOf reads one sample from the daemon's /metrics; it must be present.
func metricOf(t *testing.T, addr, name string) float64 {
	t.Helper()
	m := scrape(t, addr)
	v, ok := m[name]
	if !ok {
		t.Fatalf("/metrics has no %s", name)
	}
	return v
}

// checkSurvived checks, after the abuse, that the daemon still runs and that
// every blob file it stores re-hashes to its name, in its right shard.
func checkSurvived(t *testing.T, d *daemon) {
	t.Helper()
	select {
	case err := <-d.exited:
		d.exited <- err // for stop
		t.Fatalf("the daemon exited (%v)", err)
	default:
	}
	if r := peer(t, "status", "--json", "--data", d.dir); r.code != 0 {
		t.Fatalf("the daemon no longer answers its control socket: %s", r.stderr)
	}
	blobs := filepath.Join(d.dir, "blobs")
	n := 0
	err := filepath.WalkDir(blobs, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(blobs, p)
		switch {
		case rel == ".":
			return nil
		case e.IsDir() && (rel == "partial" || strings.HasPrefix(rel, "partial"+string(filepath.Separator))):
			return filepath.SkipDir
		case e.IsDir():
			if len(e.Name()) != 2 {
				t.Errorf("unexpected directory blobs/%s", rel)
			}
			return nil
		}
		ref, err := datastore.ParseRef(e.Name())
		if err != nil || ref.String() != e.Name() {
			t.Errorf("blobs/%s: not a BlobRef (%v)", rel, err)
			return nil
		}
		if shard := e.Name()[len(e.Name())-3 : len(e.Name())-1]; filepath.Base(filepath.Dir(p)) != shard {
			t.Errorf("blobs/%s: in the wrong shard (want %s)", rel, shard)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if got := datastore.RefOf(b); got != ref {
			t.Errorf("blobs/%s holds bytes hashing to %s", rel, got)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon alive; %d blob files re-hash to their names", n)
}

// dataDirListing is every file and directory under dir with its size, except
// leveldb's own churn (LOG, *.log, *.ldb, MANIFEST, CURRENT) under datastore/.
func dataDirListing(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "api.sock" {
			return nil
		}
		if strings.HasPrefix(rel, "datastore"+string(filepath.Separator)) {
			name := e.Name()
			if strings.HasPrefix(name, "LOG") || strings.HasPrefix(name, "MANIFEST-") || strings.HasPrefix(name, "CURRENT") ||
				strings.HasSuffix(name, ".log") || strings.HasSuffix(name, ".ldb") || name == "LOCK" {
				return nil
			}
		}
		var size int64 = -1 // directories
		if !e.IsDir() {
			fi, err := e.Info()
			if err != nil {
				return err
			}
			size = fi.Size()
		}
		out[rel] = size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// diffDataDir lists what was added (+), removed (-) and resized (~).
func diffDataDir(before, after map[string]int64) string {
	var d []string
	for k, v := range after {
		if b, ok := before[k]; !ok {
			d = append(d, "+ "+k)
		} else if b != v {
			d = append(d, fmt.Sprintf("~ %s (%d -> %d bytes)", k, b, v))
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			d = append(d, "- "+k)
		}
	}
	sort.Strings(d)
	return strings.Join(d, "\n")
}

// partialLen is the size of ref's partial file on d, or -1 if there is none.
func partialLen(t *testing.T, d *daemon, ref datastore.Ref) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(d.dir, "blobs", "partial", ref.String()))
	if errors.Is(err, fs.ErrNotExist) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// heldOnDisk reports whether ref has a file under its final name on d.
func heldOnDisk(t *testing.T, d *daemon, ref datastore.Ref) bool {
	t.Helper()
	name := ref.String()
	_, err := os.Stat(filepath.Join(d.dir, "blobs", name[len(name)-3:len(name)-1], name))
	return err == nil
}

// bgResult is what a peer command run in the background did.
type bgResult struct {
	result
	took time.Duration
	err  error // the command could not be run
}

// peerBackground runs the binary in the background (no testing.T in the
// goroutine); the result arrives on the channel.
func peerBackground(ctx context.Context, args ...string) <-chan bgResult {
	ch := make(chan bgResult, 1)
	go func() {
		start := time.Now()
		cmd := exec.CommandContext(ctx, peerBin, args...)
		cmd.Env = append(os.Environ(), "BLOBSYNC_DATA=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		r := bgResult{result: result{stdout: stdout.String(), stderr: stderr.String()}, took: time.Since(start)}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		} else {
			r.err = err
		}
		ch <- r
	}()
	return ch
}

// metricsSampler scrapes a daemon's /metrics until stopped, keeping the peaks.
type metricsSampler struct {
	mu       sync.Mutex
	peakHeap float64
	peakGo   float64
	samples  int
	errs     int
	stop     chan struct{}
	done     chan struct{}
}

func startMetricsSampler(addr string, every time.Duration) *metricsSampler {
	s := &metricsSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			m, err := scrapeErr(addr)
			s.mu.Lock()
			if err != nil {
				s.errs++
			} else {
				s.samples++
				s.peakHeap = max(s.peakHeap, m["go_memstats_heap_inuse_bytes"])
				s.peakGo = max(s.peakGo, m["go_goroutines"])
			}
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops the sampler and returns the peak heap in use, the peak
// goroutine count and the number of samples.
func (s *metricsSampler) finish() (heap, goroutines float64, samples, errs int) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakHeap, s.peakGo, s.samples, s.errs
}

// isDeadline reports a deadline that expired.
func isDeadline(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// membersOf is peer sg members SGID --json on d: peer ID → role.
func membersOf(t *testing.T, d *daemon, id string) map[string]string {
	t.Helper()
	var ms []struct{ Peer, Role string }
	if err := json.Unmarshal([]byte(ok(t, "sg", "members", id, "--json", "--data", d.dir)), &ms); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range ms {
		out[m.Peer] = m.Role
	}
	return out
}

// silent opens a raw stream to the daemon, below protocol negotiation, sends
// nothing and waits up to wait for the daemon to end it.
func (a *attacker) silent(ctx context.Context, wait time.Duration) rawReply {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	st, err := a.h.Network().NewStream(ctx, a.target)
	if err != nil {
		return rawReply{openErr: err}
	}
	defer st.Reset()
	st.SetDeadline(time.Now().Add(wait))
	data, err := io.ReadAll(st)
	// The daemon speaks first in multistream-select: its header is no answer.
	return rawReply{data: bytes.TrimPrefix(data, multistreamHeader), err: err}
}

// multistreamHeader is multistream-select's opening line, as a frame.
var multistreamHeader = append([]byte{19}, "/multistream/1.0.0\n"...)

// outcomeTally counts outcomes by kind.
type outcomeTally struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *outcomeTally) add(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[kind]++
}

func (c *outcomeTally) get(kind string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[kind]
}

func (c *outcomeTally) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

func (c *outcomeTally) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	for k, v := range c.n {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// Outcome kinds of a flood stream.
const (
	floodAnswered  = "answered exactly as for an unknown blob"
	floodLimited   = "refused for resource limits"
	floodReset     = "reset without answer"
	floodHeld      = "held open without answer"
	floodNotOpened = "not opened"
)

// classifyReply names r's outcome; answer is the one expected answer, if any.
func classifyReply(r rawReply, answer []byte) string {
	switch {
	case r.limited():
		return floodLimited
	case r.openErr != nil:
		return floodNotOpened
	case answer != nil && r.err == nil && bytes.Equal(r.data, answer):
		return floodAnswered
	case len(r.data) == 0 && r.reset():
		return floodReset
	case len(r.data) == 0 && isDeadline(r.err):
		return floodHeld
	}
	return "unexpected: " + r.String()
}

// floodWith runs op(0), op(1), … on workers goroutines until at least n ran and
// enough() holds, or 5n ran, or ctx ends; it returns how many ran.
func floodWith(ctx context.Context, workers, n int, enough func() bool, op func(i int)) int {
	var mu sync.Mutex
	next := 0
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				mu.Lock()
				i := next
				if (i >= n && enough()) || i >= 5*n {
					mu.Unlock()
					return
				}
				next++
				mu.Unlock()
				op(i)
			}
		})
	}
	wg.Wait()
	return next
}
