package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const sg = "/blobsync/sg/family-photos"

// eventuallyOK reruns a peer command until it exits 0 (bounded: 20 s).
func eventuallyOK(t *testing.T, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := peer(t, args...)
		if r.code == 0 {
			return r.stdout
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer %s kept failing: %s", strings.Join(args, " "), r.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func members(t *testing.T, d *daemon) map[string]string {
	t.Helper()
	var ms []struct{ Peer, Role string }
	if err := json.Unmarshal([]byte(ok(t, "sg", "members", sg, "--json", "--data", d.dir)), &ms); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range ms {
		out[m.Peer] = m.Role
	}
	return out
}

func bytesSent(t *testing.T, d *daemon) int64 {
	t.Helper()
	var st struct {
		Transfers struct {
			BytesSent int64 `json:"bytes_sent"`
		}
	}
	if err := json.Unmarshal([]byte(ok(t, "status", "--json", "--data", d.dir)), &st); err != nil {
		t.Fatal(err)
	}
	return st.Transfers.BytesSent
}

// TestSyncgroupMembersFetchOthersNot: A creates an open group, B joins via A;
// a blob A puts into the group is fetched by B with no --from; C, not a
// member, gets exactly the unknown-blob answer and 0 bytes.
func TestSyncgroupMembersFetchOthersNot(t *testing.T) {
	a, b, c := startDaemon(t, tcpListen), startDaemon(t, tcpListen), startDaemon(t, tcpListen)
	ok(t, "sg", "create", sg, "--open", "--data", a.dir)
	ok(t, "sg", "join", sg, "--via", a.addr(t, "tcp"), "--role", "server", "--data", b.dir)
	if m := members(t, a); m[a.id] != "normal" || m[b.id] != "server" || len(m) != 2 {
		t.Fatalf("A's members: %v", m)
	}
	eventually(t, "B to know A", func() bool { return members(t, b)[a.id] == "normal" })

	path, data := writeRandomFile(t, 3<<20)
	ref := strings.TrimSpace(ok(t, "put", path, "--sg", sg, "--data", a.dir))

	out := filepath.Join(t.TempDir(), "out")
	eventuallyOK(t, "get", ref, "-o", out, "--data", b.dir) // no --from: the signpost says where
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("B's copy differs")
	}

	sentBefore := bytesSent(t, a)
	unknown := "bafkr4iaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	rPrivate := peer(t, "get", ref, "--from", a.addr(t, "tcp"), "-o", filepath.Join(t.TempDir(), "x"), "--data", c.dir)
	rUnknown := peer(t, "get", unknown, "--from", a.addr(t, "tcp"), "-o", filepath.Join(t.TempDir(), "y"), "--data", c.dir)
	if rPrivate.code != 1 || rUnknown.code != 1 {
		t.Fatalf("non-member get: exit %d (group blob), %d (unknown)", rPrivate.code, rUnknown.code)
	}
	if strings.ReplaceAll(rPrivate.stderr, ref, "REF") != strings.ReplaceAll(rUnknown.stderr, unknown, "REF") {
		t.Fatalf("a group blob and an unknown one answered differently:\n%s\n%s", rPrivate.stderr, rUnknown.stderr)
	}
	if sent := bytesSent(t, a); sent != sentBefore {
		t.Fatalf("A sent %d bytes to a non-member", sent-sentBefore)
	}
	if r := peer(t, "has", ref, "--data", c.dir); r.code != 1 {
		t.Fatal("the non-member holds the blob")
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	within(t, 20*time.Second, what, cond)
}

// TestAllowlistGroup: a peer not on the list cannot join; one on it can.
func TestAllowlistGroup(t *testing.T) {
	a, b, c := startDaemon(t, tcpListen), startDaemon(t, tcpListen), startDaemon(t, tcpListen)
	ok(t, "sg", "create", sg, "--allow", b.id, "--data", a.dir)
	failsWith(t, 1, "join refused", "sg", "join", sg, "--via", a.addr(t, "tcp"), "--data", c.dir)
	if ls := ok(t, "sg", "ls", "--json", "--data", c.dir); strings.TrimSpace(ls) != "[]" {
		t.Fatalf("refused peer lists groups: %s", ls)
	}
	if _, in := members(t, a)[c.id]; in {
		t.Fatal("refused peer recorded as a member")
	}
	ok(t, "sg", "join", sg, "--via", a.addr(t, "tcp"), "--data", b.dir)
	if _, in := members(t, a)[b.id]; !in {
		t.Fatal("allowed peer not a member")
	}
}

// TestOfflineMemberCatchesUp: blobs announced and a member joined while B was
// stopped reach B when it returns.
func TestOfflineMemberCatchesUp(t *testing.T) {
	a, b := startDaemon(t, tcpListen), startDaemon(t, tcpListen)
	ok(t, "sg", "create", sg, "--open", "--data", a.dir)
	ok(t, "sg", "join", sg, "--via", a.addr(t, "tcp"), "--data", b.dir)
	b.stop(t)

	d := startDaemon(t, tcpListen)
	ok(t, "sg", "join", sg, "--via", a.addr(t, "tcp"), "--data", d.dir)
	var refs []string
	var datas [][]byte
	for i := range 3 {
		path, data := writeRandomFile(t, 100_000+i)
		refs = append(refs, strings.TrimSpace(ok(t, "put", path, "--sg", sg, "--data", a.dir)))
		datas = append(datas, data)
	}

	b2 := runDaemon(t, b.dir, tcpListen) // back, on a new port
	eventually(t, "B to learn of D", func() bool { _, in := members(t, b2)[d.id]; return in })
	for i, ref := range refs {
		out := filepath.Join(t.TempDir(), "out")
		eventuallyOK(t, "get", ref, "-o", out, "--data", b2.dir)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, datas[i]) {
			t.Fatalf("blob %d differs", i)
		}
	}
	// A learns B's new address from B's own announcement.
	eventually(t, "A to learn B's new address", func() bool {
		var ms []struct {
			Peer  string
			Addrs []string
		}
		json.Unmarshal([]byte(ok(t, "sg", "members", sg, "--json", "--data", a.dir)), &ms)
		for _, m := range ms {
			if m.Peer == b2.id {
				return slices.ContainsFunc(m.Addrs, func(s string) bool { return strings.HasPrefix(b2.addr(t, "tcp"), s) })
			}
		}
		return false
	})
}

func TestSyncgroupBadInput(t *testing.T) {
	a := startDaemon(t, tcpListen)
	path, _ := writeRandomFile(t, 1000)
	failsWith(t, 2, "does not begin with /blobsync/sg/", "sg", "create", "family", "--open", "--data", a.dir)
	failsWith(t, 2, "does not begin with /blobsync/sg/", "put", path, "--sg", "/ipfs/x", "--data", a.dir)
	failsWith(t, 2, "exactly one of --open and --allow", "sg", "create", sg, "--data", a.dir)
	failsWith(t, 2, "not a peer ID", "sg", "create", sg, "--allow", "alice", "--data", a.dir)
	failsWith(t, 2, "--role", "sg", "create", sg, "--open", "--role", "boss", "--data", a.dir)
	failsWith(t, 1, "no reachable member", "sg", "join", sg, "--data", a.dir) // no DHT peers: nobody to find
	failsWith(t, 1, "unknown syncgroup", "put", path, "--sg", sg, "--data", a.dir)
	failsWith(t, 1, "unknown syncgroup", "sg", "members", sg, "--data", a.dir)
	if ls := ok(t, "ls", "--json", "--data", a.dir); strings.TrimSpace(ls) != "[]" {
		t.Fatalf("a put into an unknown group stored the blob: %s", ls)
	}
	ok(t, "sg", "create", sg, "--open", "--data", a.dir)
	failsWith(t, 1, "already exists", "sg", "create", sg, "--open", "--data", a.dir)
	failsWith(t, 1, "cannot join through this peer itself", "sg", "join", sg, "--via", a.addr(t, "tcp"), "--data", a.dir)
}
