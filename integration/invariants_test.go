package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blobsync/blobsync/datastore"
)

// What checkInvariants allows a daemon beyond its idle baseline, per
// connection it holds beyond the baseline's (a go-libp2p TCP connection costs
// 5 goroutines and 1 fd here: yamux and swarm loops, and the socket) and in
// all (scrapes, status calls and timers coming and going). The fds counted
// leave out leveldb's own files under <data>/datastore, whose table cache
// legitimately grows; files under <data>/blobs must all be closed when idle.
const (
	goroutinesPerConn = 5
	fdsPerConn        = 1
	goroutineSlack    = 8
	fdSlack           = 3
)

// fullStatus is the part of peer status --json the fault tests and the
// invariants read.
type fullStatus struct {
	Blobs int
	Peers []struct {
		ID    string
		Addrs []string
	}
	Partials []struct {
		Ref  string
		Size int64
	}
	Transfers struct {
		BytesSent     int64 `json:"bytes_sent"`
		BytesReceived int64 `json:"bytes_received"`
	}
	FetchQueue struct {
		Pending  int
		InFlight int `json:"in_flight"`
		Blobs    []queuedBlob
		LastScan struct {
			At time.Time
		} `json:"last_scan"`
	} `json:"fetch_queue"`
	Metrics string
}

// queuedBlob is one blob of the server fetcher's queue, as status shows it.
type queuedBlob struct {
	Ref         string
	Attempts    uint32
	InFlight    bool       `json:"in_flight"`
	NextAttempt *time.Time `json:"next_attempt"`
	LastError   string     `json:"last_error"`
}

func fullStatusOf(t *testing.T, d *daemon) fullStatus {
	t.Helper()
	var st fullStatus
	if err := json.Unmarshal([]byte(ok(t, "status", "--json", "--data", d.dir)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// queued returns ref's entry in the fetch queue, if it is there.
func (st fullStatus) queued(ref string) (queuedBlob, bool) {
	for _, b := range st.FetchQueue.Blobs {
		if b.Ref == ref {
			return b, true
		}
	}
	return queuedBlob{}, false
}

// partial returns the size of ref's partial file, if there is one.
func (st fullStatus) partial(ref string) (int64, bool) {
	for _, p := range st.Partials {
		if p.Ref == ref {
			return p.Size, true
		}
	}
	return 0, false
}

// resources is what a running daemon holds: goroutines, open file
// descriptors (but leveldb's), those of them in its blob store, and libp2p
// connections.
type resources struct{ goroutines, fds, blobFDs, conns int }

func (r resources) String() string {
	return fmt.Sprintf("%d goroutines, %d fds (%d in blobs/), %d connections", r.goroutines, r.fds, r.blobFDs, r.conns)
}

// idle holds each data directory's baseline: its first daemon's resources
// once idle after start. Later daemons on the directory (restarts) are held to
// the same baseline: a restart must not cost more than a fresh start.
var (
	idleMu sync.Mutex
	idle   = map[string]resources{}
)

// noKeepAlive scrapes without leaving a connection (a goroutine and an fd in
// the daemon) open between scrapes.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

// resourcesOf samples d, which must have been started with --metrics.
func resourcesOf(t *testing.T, d *daemon) resources {
	t.Helper()
	st := fullStatusOf(t, d)
	if st.Metrics == "" {
		t.Fatalf("daemon %s serves no metrics: start it with --metrics 127.0.0.1:0", d.dir)
	}
	var r resources
	for _, p := range st.Peers {
		r.conns += len(p.Addrs)
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		switch {
		case err != nil: // closed meanwhile
		case strings.HasPrefix(target, filepath.Join(d.dir, "datastore")+"/"):
		case strings.HasPrefix(target, filepath.Join(d.dir, "blobs")+"/"):
			r.blobFDs++
			r.fds++
		default:
			r.fds++
		}
	}
	r.goroutines = int(metricOf(t, st.Metrics, "go_goroutines"))
	return r
}

// markIdle records d's baseline for checkInvariants: its resources once three
// samples in a row agree (at most 10 s).
func markIdle(t *testing.T, d *daemon) {
	t.Helper()
	var last resources
	same := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && same < 2; {
		time.Sleep(200 * time.Millisecond)
		r := resourcesOf(t, d)
		if r == last {
			same++
		} else {
			last, same = r, 0
		}
	}
	t.Logf("baseline of %s: %v", d.dir, last)
	idleMu.Lock()
	idle[d.dir] = last
	idleMu.Unlock()
}

// checkInvariants checks what must hold after any fault, for every daemon
// given (running or not):
//   - every file under <data>/blobs/<2 chars>/ hashes to its name, in its
//     right shard: nothing unverified sits under a final name;
//   - no put-* temp file is left in blobs/partial, nor a partial file of a
//     blob held;
//   - a running daemon with a baseline (markIdle) returns, within 10 s, to
//     its baseline's goroutines and open fds, allowing for the connections it
//     holds now beyond the baseline's, with no file of its blob store open;
//   - no daemon's log shows a panic, a fatal runtime error or a data race.
//
// It ends by stopping the daemons still running (SIGTERM: each must exit 0),
// so that their logs are read whole and race-free.
func checkInvariants(t *testing.T, daemons ...*daemon) {
	t.Helper()
	for _, d := range daemons {
		checkBlobStore(t, d.dir)
	}
	for _, d := range daemons {
		if d.cmd.ProcessState != nil {
			continue // exited (killed); its log is checked below
		}
		idleMu.Lock()
		base, found := idle[d.dir]
		idleMu.Unlock()
		if found {
			checkSettles(t, d, base)
		}
	}
	for _, d := range daemons {
		d.stop(t)
	}
	for _, d := range daemons {
		log := d.log.String()
		for _, bad := range []string{"panic", "fatal error", "DATA RACE"} {
			if i := strings.Index(log, bad); i >= 0 {
				t.Errorf("daemon %s logged %q: %s", d.dir, bad, log[max(0, i-200):min(len(log), i+2000)])
			}
		}
	}
}

// checkSettles polls d until its goroutines and fds are back within bounds of
// base, for at most 10 s.
func checkSettles(t *testing.T, d *daemon, base resources) {
	t.Helper()
	var r resources
	for deadline := time.Now().Add(10 * time.Second); ; {
		r = resourcesOf(t, d)
		extra := max(0, r.conns-base.conns)
		maxG := base.goroutines + goroutinesPerConn*extra + goroutineSlack
		maxF := base.fds + fdsPerConn*extra + fdSlack
		if r.goroutines <= maxG && r.fds <= maxF && r.blobFDs == 0 {
			t.Logf("daemon %s settled: %v (baseline %v)", d.dir, r, base)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("daemon %s holds %v after 10 s idle; its baseline was %v, allowing %d goroutines, %d fds, none in blobs/ (fds: %s)",
				d.dir, r, base, maxG, maxF, fdTargets(d))
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// fdTargets lists what d's open fds point to, for a failure message.
func fdTargets(d *daemon) string {
	dir := fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, target)
	}
	return strings.Join(out, " ")
}

// checkBlobStore checks the blob directory of the data directory dir: every
// file in a 2-character shard is a verified blob named by its BlobRef in its
// shard, and no local put left a temp file behind.
func checkBlobStore(t *testing.T, dir string) {
	t.Helper()
	blobs := filepath.Join(dir, "blobs")
	shards, err := os.ReadDir(blobs)
	if err != nil {
		t.Errorf("blob store of %s: %v", dir, err)
		return
	}
	for _, sh := range shards {
		if !sh.IsDir() || len(sh.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(blobs, sh.Name()))
		if err != nil {
			t.Errorf("blob store of %s: %v", dir, err)
			continue
		}
		for _, f := range files {
			name := f.Name()
			path := filepath.Join(blobs, sh.Name(), name)
			ref, err := datastore.ParseRef(name)
			if err != nil || ref.String() != name || name[len(name)-3:len(name)-1] != sh.Name() {
				t.Errorf("%s: a file under a final name that is no BlobRef of this shard (%v)", path, err)
				continue
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%s: %v", path, err)
				continue
			}
			if got := datastore.RefOf(data); got != ref {
				t.Errorf("%s: %d bytes that hash to %s: unverified bytes under a final name", path, len(data), got)
			}
		}
	}
	partials, err := os.ReadDir(filepath.Join(blobs, "partial"))
	if err != nil {
		t.Errorf("blob store of %s: %v", dir, err)
		return
	}
	for _, p := range partials {
		name := p.Name()
		if strings.HasPrefix(name, "put-") {
			t.Errorf("%s: a local put's temp file left in blobs/partial: %s", dir, name)
		}
		if len(name) < 3 {
			continue
		}
		// A partial file of a held blob would never be resumed nor removed.
		// (Checked twice: a rename that installs it meanwhile removes it.)
		if _, err := os.Stat(filepath.Join(blobs, name[len(name)-3:len(name)-1], name)); err == nil {
			if _, err := os.Stat(filepath.Join(blobs, "partial", name)); err == nil {
				t.Errorf("%s: a partial file left for a blob held: %s", dir, name)
			}
		}
	}
}
