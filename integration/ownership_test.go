package integration

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

type lsEntry struct {
	Ref    string
	Shares map[string]int32
	Pinned bool
}

func ls(t *testing.T, d *daemon) map[string]lsEntry {
	t.Helper()
	var entries []lsEntry
	if err := json.Unmarshal([]byte(ok(t, "ls", "--json", "--data", d.dir)), &entries); err != nil {
		t.Fatal(err)
	}
	out := map[string]lsEntry{}
	for _, e := range entries {
		out[e.Ref] = e
	}
	return out
}

// TestOwnershipHandOver: a device keeps its blobs until servers hold them;
// then it holds no shares and gc frees its copy, except a pinned one; a new
// member still gets the blob from the servers.
func TestOwnershipHandOver(t *testing.T) {
	device := startDaemon(t, tcpListen)
	ok(t, "sg", "create", sg, "--open", "--data", device.dir)
	path1, data1 := writeRandomFile(t, 300_000)
	path2, _ := writeRandomFile(t, 200_001)
	b1 := strings.TrimSpace(ok(t, "put", path1, "--sg", sg, "--data", device.dir))
	b2 := strings.TrimSpace(ok(t, "put", path2, "--sg", sg, "--data", device.dir))
	ok(t, "pin", b2, "--data", device.dir)
	if own := ls(t, device); own[b1].Shares[sg] != 2 || own[b2].Shares[sg] != 2 || !own[b2].Pinned || own[b1].Pinned {
		t.Fatalf("after the puts: %+v", own)
	}
	if out := ok(t, "gc", "--data", device.dir); !strings.Contains(out, "freed 0 B in 0 blobs") {
		t.Fatalf("gc before any server has the blobs: %s", out)
	}

	s1, s2 := startDaemon(t, tcpListen), startDaemon(t, tcpListen)
	for _, s := range []*daemon{s1, s2} {
		ok(t, "sg", "join", sg, "--via", device.addr(t, "tcp"), "--role", "server", "--data", s.dir)
	}
	for _, s := range []*daemon{s1, s2} {
		eventually(t, "the servers to hold both", func() bool { return held(t, s, b1) && held(t, s, b2) })
	}
	eventually(t, "the device to hand over its shares", func() bool {
		own := ls(t, device)
		return own[b1].Shares[sg] == 0 && own[b2].Shares[sg] == 0
	})
	total := func(ref string) int32 { return ls(t, s1)[ref].Shares[sg] + ls(t, s2)[ref].Shares[sg] }
	eventually(t, "the servers to hold the shares", func() bool { return total(b1) == 2 && total(b2) == 2 })

	var res struct {
		Dropped []struct{ Ref string }
		Freed   int64
	}
	if err := json.Unmarshal([]byte(ok(t, "gc", "--json", "--data", device.dir)), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Dropped) != 1 || res.Dropped[0].Ref != b1 || res.Freed != 300_000 {
		t.Fatalf("gc after the hand-over: %+v", res)
	}
	if held(t, device, b1) || !held(t, device, b2) {
		t.Fatal("gc dropped the wrong copies")
	}
	var st struct{ Blobs, Owned, Pinned int }
	json.Unmarshal([]byte(ok(t, "status", "--json", "--data", device.dir)), &st)
	if st.Blobs != 1 || st.Owned != 1 || st.Pinned != 1 {
		t.Fatalf("device status: %+v", st)
	}

	late := startDaemon(t, tcpListen)
	ok(t, "sg", "join", sg, "--via", s1.addr(t, "tcp"), "--data", late.dir)
	r := peer(t, "get", b1, "--data", late.dir)
	if r.code != 0 || !bytes.Equal([]byte(r.stdout), data1) {
		t.Fatalf("a new member's get after the device dropped its copy: exit %d: %s", r.code, r.stderr)
	}
	failsWith(t, 1, "not held here", "pin", "bafkr4iaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "--data", device.dir)
	failsWith(t, 2, "--max-storage", "daemon", "--max-storage", "lots", "--data", device.dir)
}
