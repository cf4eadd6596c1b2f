package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func held(t *testing.T, d *daemon, ref string) bool {
	t.Helper()
	return peer(t, "has", ref, "--data", d.dir).code == 0
}

// setConfig changes config.json's limits before a daemon starts.
func setConfig(t *testing.T, dir string, limits map[string]any) {
	t.Helper()
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	for k, v := range limits {
		cfg["limits"].(map[string]any)[k] = v
	}
	b, _ = json.Marshal(cfg)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// newDataDir initializes a data directory without starting its daemon.
func newDataDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ok(t, "init", "--data", dir)
	return dir
}

// TestServerBlobFetch is the seed's TestV23ServerBlobFetch on real binaries:
// blobs put on a device reach both servers with no get; the normal member
// does not fetch on its own; with the device stopped, a new member gets the
// blobs from a server.
func TestServerBlobFetch(t *testing.T) {
	device, s1, s2, normal := startDaemon(t, tcpListen), startDaemon(t, tcpListen), startDaemon(t, tcpListen), startDaemon(t, tcpListen)
	ok(t, "sg", "create", sg, "--open", "--data", device.dir)
	for _, s := range []*daemon{s1, s2} {
		ok(t, "sg", "join", sg, "--via", device.addr(t, "tcp"), "--role", "server", "--data", s.dir)
	}
	ok(t, "sg", "join", sg, "--via", device.addr(t, "tcp"), "--data", normal.dir)

	var refs []string
	var datas [][]byte
	for _, size := range []int{1, 1 << 20, 5<<20 + 3} {
		path, data := writeRandomFile(t, size)
		refs = append(refs, strings.TrimSpace(ok(t, "put", path, "--sg", sg, "--data", device.dir)))
		datas = append(datas, data)
	}
	for _, s := range []*daemon{s1, s2} {
		for i, ref := range refs {
			eventually(t, "a server to hold a blob nobody asked it for", func() bool { return held(t, s, ref) })
			r := peer(t, "get", ref, "--data", s.dir)
			if r.code != 0 || !bytes.Equal([]byte(r.stdout), datas[i]) {
				t.Fatalf("server's copy of blob %d: exit %d, differs", i, r.code)
			}
		}
		if st := fullStatusOf(t, s); st.FetchQueue.Pending != 0 || len(st.Partials) != 0 {
			t.Fatalf("server status after fetching all: %+v", st)
		}
	}
	// The normal member knows every blob (it had the announcements) yet holds none.
	if st := fullStatusOf(t, normal); st.Blobs != 0 || st.FetchQueue.Pending != 0 || st.Transfers.BytesReceived != 0 {
		t.Fatalf("normal member fetched on its own: %+v", st)
	}

	device.stop(t)
	late := startDaemon(t, tcpListen)
	ok(t, "sg", "join", sg, "--via", s1.addr(t, "tcp"), "--data", late.dir)
	for i, ref := range refs {
		r := peer(t, "get", ref, "--data", late.dir)
		if r.code != 0 || !bytes.Equal([]byte(r.stdout), datas[i]) {
			t.Fatalf("with the device gone, a new member's get of blob %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
}

// TestServerKilledMidFetchResumes: a server killed with SIGKILL in the middle
// of a fetch resumes from its partial file after a restart.
func TestServerKilledMidFetchResumes(t *testing.T) {
	deviceDir := newDataDir(t)
	setConfig(t, deviceDir, map[string]any{"max_upload_rate": 8 << 20}) // 48 MiB take 6 s
	device := runDaemon(t, deviceDir, tcpListen)
	server := startDaemon(t, tcpListen)
	ok(t, "sg", "create", sg, "--open", "--data", device.dir)
	ok(t, "sg", "join", sg, "--via", device.addr(t, "tcp"), "--role", "server", "--data", server.dir)

	path, data := writeRandomFile(t, 48<<20)
	ref := strings.TrimSpace(ok(t, "put", path, "--sg", sg, "--data", device.dir))
	var kept int64
	eventually(t, "the partial file to pass 8 MiB", func() bool {
		for _, p := range fullStatusOf(t, server).Partials {
			if p.Ref == ref && p.Size >= 8<<20 {
				return true
			}
		}
		return false
	})
	server.cmd.Process.Signal(syscall.SIGKILL)
	<-server.exited
	for _, e := range mustReadDir(t, filepath.Join(server.dir, "blobs", "partial")) {
		if e.Name() == ref {
			info, _ := e.Info()
			kept = info.Size()
		}
	}
	if kept < 8<<20 || kept >= int64(len(data)) {
		t.Fatalf("after the kill the partial file holds %d bytes", kept)
	}

	restarted := runDaemon(t, server.dir, tcpListen)
	eventually(t, "the restarted server to finish", func() bool { return held(t, restarted, ref) })
	r := peer(t, "get", ref, "--data", restarted.dir)
	if !bytes.Equal([]byte(r.stdout), data) {
		t.Fatal("resumed blob differs")
	}
	st := fullStatusOf(t, restarted)
	if st.Transfers.BytesReceived != int64(len(data))-kept {
		t.Fatalf("after the restart the server received %d bytes; resuming from %d should take %d", st.Transfers.BytesReceived, kept, int64(len(data))-kept)
	}
	if len(st.Partials) != 0 {
		t.Fatalf("partials left: %+v", st.Partials)
	}
}

func mustReadDir(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// entries returns how many of sg's log entries d holds.
func entries(t *testing.T, d *daemon) uint64 {
	t.Helper()
	var groups []struct{ Entries uint64 }
	if err := json.Unmarshal([]byte(ok(t, "sg", "ls", "--json", "--data", d.dir)), &groups); err != nil || len(groups) != 1 {
		t.Fatalf("sg ls: %v %v", groups, err)
	}
	return groups[0].Entries
}

// TestReconnectedDeviceIsFetchedAtOnce: while the device is offline the
// server's attempts fail and back off; when the device returns, the server
// fetches at once, not when its backoff ends.
func TestReconnectedDeviceIsFetchedAtOnce(t *testing.T) {
	device, normal, server := startDaemon(t, tcpListen), startDaemon(t, tcpListen), startDaemon(t, tcpListen)
	ok(t, "sg", "create", sg, "--open", "--data", device.dir)
	ok(t, "sg", "join", sg, "--via", device.addr(t, "tcp"), "--data", normal.dir)
	ok(t, "sg", "join", sg, "--via", device.addr(t, "tcp"), "--role", "server", "--data", server.dir)
	server.stop(t)

	path, data := writeRandomFile(t, 1<<20)
	ref := strings.TrimSpace(ok(t, "put", path, "--sg", sg, "--data", device.dir))
	eventually(t, "the normal member to hold the announcement", func() bool { return entries(t, normal) == entries(t, device) })
	device.stop(t)

	// The server returns, learns of the blob from the normal member (which
	// does not hold it) and fails to reach the device, again and again.
	back := runDaemon(t, server.dir, tcpListen)
	var next time.Time
	eventually(t, "three failed attempts", func() bool {
		for _, b := range fullStatusOf(t, back).FetchQueue.Blobs {
			if b.Ref == ref && b.Attempts >= 3 && b.NextAttempt != nil {
				next = *b.NextAttempt
				return true
			}
		}
		return false
	})
	if wait := time.Until(next); wait < 2*time.Second {
		t.Fatalf("after 3 failures the next attempt is only %v away; the test needs a longer backoff to tell", wait)
	}

	runDaemon(t, device.dir, tcpListen)
	eventually(t, "the server to fetch from the returned device", func() bool { return held(t, back, ref) })
	if fetched := time.Now(); !fetched.Before(next) {
		t.Fatalf("fetched at %v, not before the backoff's next attempt at %v", fetched, next)
	}
	if r := peer(t, "get", ref, "--data", back.dir); !bytes.Equal([]byte(r.stdout), data) {
		t.Fatal("the server's copy differs")
	}
	if held(t, normal, ref) {
		t.Fatal("the normal member fetched the blob")
	}
}
