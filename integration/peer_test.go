// Package integration runs the real peer binary: daemons on 127.0.0.1 in
// temporary data directories, driven through the command line.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// peerBin is the peer binary, built once for the package by the first test
// that needs it.
var (
	peerBin   string
	buildOnce sync.Once
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "blobsync-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	peerBin = filepath.Join(dir, "peer")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// built builds the peer binary once. It runs inside the tests, where go test
// records the files a test touches: stating the sources there makes any
// change to them rerun the suite instead of replaying a cached result.
func built(t *testing.T) {
	t.Helper()
	buildOnce.Do(func() {
		if buildErr = statSources(".."); buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", peerBin, "../cmd/peer").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building peer: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// statSources stats every Go source and module file under root.
func statSources(root string) error {
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if name := d.Name(); strings.HasSuffix(name, ".go") || name == "go.mod" || name == "go.sum" {
			_, err = os.Stat(p)
		}
		return err
	})
}

// result is what one peer command did.
type result struct {
	stdout, stderr string
	code           int
}

// peer runs the binary with args and returns its output and exit status.
func peer(t *testing.T, args ...string) result {
	t.Helper()
	built(t)
	// Not t.Context(): cleanups (checkInvariants) run commands too.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, peerBin, args...)
	cmd.Env = append(os.Environ(), "BLOBSYNC_DATA=") // only --data counts
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("peer %s: %v", strings.Join(args, " "), err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// ok runs the binary and fails the test unless it exits 0.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	r := peer(t, args...)
	if r.code != 0 {
		t.Fatalf("peer %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// daemon is a running peer daemon.
type daemon struct {
	dir    string
	id     string
	addrs  []string
	cmd    *exec.Cmd
	log    *bytes.Buffer
	exited chan error
}

// startDaemon initializes a data directory and runs a daemon on it listening
// on listen. The test's cleanup stops it with SIGTERM and checks it exits 0.
func startDaemon(t *testing.T, listen ...string) *daemon {
	t.Helper()
	return startDaemonWith(t, nil, listen...)
}

// startDaemonWith is startDaemon with extra daemon flags.
func startDaemonWith(t *testing.T, extra []string, listen ...string) *daemon {
	t.Helper()
	// Short: unix socket paths are limited to ~104 bytes.
	dir, err := os.MkdirTemp("", "bs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ok(t, "init", "--data", dir)
	return runDaemonWith(t, dir, extra, listen...)
}

func runDaemon(t *testing.T, dir string, listen ...string) *daemon {
	t.Helper()
	return runDaemonWith(t, dir, nil, listen...)
}

func runDaemonWith(t *testing.T, dir string, extra []string, listen ...string) *daemon {
	t.Helper()
	built(t)
	args := append([]string{"daemon", "--data", dir, "--log-level", "debug"}, extra...)
	for _, l := range listen {
		args = append(args, "--listen", l)
	}
	d := &daemon{dir: dir, cmd: exec.Command(peerBin, args...), log: &bytes.Buffer{}, exited: make(chan error, 1)}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() { d.stop(t) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		r := peer(t, "id", "--data", dir, "--json")
		if r.code == 0 {
			var id struct {
				ID    string
				Addrs []string
			}
			if err := json.Unmarshal([]byte(r.stdout), &id); err != nil {
				t.Fatalf("peer id --json: %v: %s", err, r.stdout)
			}
			d.id, d.addrs = id.ID, id.Addrs
			return d
		}
		select {
		case err := <-d.exited:
			t.Fatalf("daemon exited early (%v): %s", err, d.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not ready after 30s: %s", d.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and checks the daemon shuts down cleanly: exit 0 within
// 10 s and its control socket removed.
func (d *daemon) stop(t *testing.T) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.exited:
		if err != nil {
			t.Errorf("daemon %s exited with %v: %s", d.dir, err, d.log)
		}
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("daemon %s did not stop within 10s of SIGTERM", d.dir)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "api.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("daemon %s left api.sock behind", d.dir)
	}
}

// addr returns the daemon's listen address for a transport ("tcp" or "quic-v1").
func (d *daemon) addr(t *testing.T, transport string) string {
	t.Helper()
	for _, a := range d.addrs {
		if strings.Contains(a, "/"+transport+"/") {
			return a
		}
	}
	t.Fatalf("daemon has no %s address among %v", transport, d.addrs)
	return ""
}

func writeRandomFile(t *testing.T, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	for i := range data { // cheap deterministic filler that does not compress
		data[i] = byte(uint32(i) * 2654435761 >> 24)
	}
	copy(data, t.Name())
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}
