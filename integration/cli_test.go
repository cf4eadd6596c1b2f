package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// failsWith runs peer and checks it exits with code, printing exactly one line
// on stderr that contains want.
func failsWith(t *testing.T, code int, want string, args ...string) {
	t.Helper()
	r := peer(t, args...)
	if r.code != code {
		t.Errorf("peer %s: exit %d, want %d (stderr %q)", strings.Join(args, " "), r.code, code, r.stderr)
		return
	}
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.Contains(r.stderr, want) || !strings.HasPrefix(r.stderr, "peer: ") {
		t.Errorf("peer %s: stderr %q, want one line containing %q", strings.Join(args, " "), r.stderr, want)
	}
}

func TestCLIErrors(t *testing.T) {
	a := startDaemon(t, tcpListen)
	b := startDaemon(t, tcpListen)
	path, _ := writeRandomFile(t, 10_000)
	private := strings.TrimSpace(ok(t, "put", path, "--data", a.dir))
	uninit := filepath.Join(t.TempDir(), "nothing")

	failsWith(t, 2, "unknown command", "frobnicate")
	failsWith(t, 2, "needs 1 argument", "put", "--data", a.dir)
	failsWith(t, 2, "flag provided but not defined", "ls", "--bogus", "--data", a.dir)
	failsWith(t, 1, "malformed BlobRef", "get", "bafynotacid", "--data", b.dir)
	failsWith(t, 1, "malformed BlobRef", "has", "../../etc/passwd", "--data", b.dir)
	failsWith(t, 2, "must end in /p2p/", "get", private, "--from", "/ip4/127.0.0.1/tcp/1", "--data", b.dir)
	failsWith(t, 2, "needs -o FILE", "get", private, "--json", "--data", b.dir)
	failsWith(t, 1, "no such file", "put", filepath.Join(t.TempDir(), "missing"), "--data", a.dir)
	failsWith(t, 1, "not a regular file", "put", t.TempDir(), "--data", a.dir)
	failsWith(t, 1, "is not held here", "has", private, "--data", b.dir)
	failsWith(t, 1, "no daemon is running", "ls", "--data", uninit)
	failsWith(t, 1, "not initialized", "daemon", "--data", uninit)
	failsWith(t, 1, "another daemon is already running", "daemon", "--data", a.dir, "--listen", tcpListen)
	failsWith(t, 2, "bad multiaddr", "daemon", "--data", b.dir, "--listen", "not-an-addr")
	failsWith(t, 2, "--log-level", "daemon", "--data", b.dir, "--log-level", "loud")
	failsWith(t, 2, "want HOST:PORT", "daemon", "--data", b.dir, "--metrics", "nonsense")

	// A private blob is answered like an unknown one, and nothing is written.
	out := filepath.Join(t.TempDir(), "out")
	failsWith(t, 1, "not found", "get", private, "--from", a.addr(t, "tcp"), "-o", out, "--data", b.dir)
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed get created %s", out)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Errorf("a failed get left files: %v", entries)
	}
	if ls := ok(t, "ls", "--json", "--data", b.dir); strings.TrimSpace(ls) != "[]" {
		t.Errorf("failed fetches changed B's blobs: %s", ls)
	}
	if ls := ok(t, "ls", "--json", "--data", a.dir); strings.Count(ls, `"ref"`) != 1 {
		t.Errorf("failed commands changed A's blobs: %s", ls)
	}
}

func TestBadConfigIsRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	ok(t, "init", "--data", dir)
	cfg := filepath.Join(dir, "config.json")
	for name, body := range map[string]string{
		"unknown field": `{"listen": ["/ip4/127.0.0.1/tcp/0"], "lisen": []}`,
		"bad addr":      `{"listen": ["nope"]}`,
		"not json":      `{listen`,
		"zero limit":    `{"listen": ["/ip4/127.0.0.1/tcp/0"], "limits": {"max_blob_size": 0}}`,
	} {
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		r := peer(t, "daemon", "--data", dir)
		if r.code == 0 || !strings.Contains(r.stderr, "config.json") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%s: exit %d, stderr %q", name, r.code, r.stderr)
		}
	}
}

func TestInitIsIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	first := ok(t, "init", "--data", dir)
	cfgBefore, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if second := ok(t, "init", "--data", dir); second != first {
		t.Fatalf("second init printed %q, first %q", second, first)
	}
	cfgAfter, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if string(cfgBefore) != string(cfgAfter) {
		t.Fatal("init rewrote config.json")
	}
	fi, err := os.Stat(filepath.Join(dir, "identity.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity.key: %v, mode %v", err, fi.Mode())
	}
}

// TestRestartAfterKill: a daemon killed with SIGKILL leaves a stale socket;
// commands say so, and a new daemon starts over it with the blobs intact.
func TestRestartAfterKill(t *testing.T) {
	d := startDaemon(t, tcpListen)
	path, _ := writeRandomFile(t, 100_000)
	ref := strings.TrimSpace(ok(t, "put", path, "--data", d.dir))
	id := d.id
	d.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("daemon survived SIGKILL")
	}
	failsWith(t, 1, "stale control socket", "ls", "--data", d.dir)

	d2 := runDaemon(t, d.dir, tcpListen)
	if d2.id != id {
		t.Fatalf("restarted daemon has ID %s, was %s", d2.id, id)
	}
	if size := strings.TrimSpace(ok(t, "has", ref, "--data", d.dir)); size != "100000" {
		t.Fatalf("after restart has printed %q", size)
	}
}
