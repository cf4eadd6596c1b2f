package integration

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func provided(t *testing.T, d *daemon) int64 {
	t.Helper()
	var st struct{ DHT struct{ Provided int64 } }
	if err := json.Unmarshal([]byte(ok(t, "status", "--json", "--data", d.dir)), &st); err != nil {
		t.Fatal(err)
	}
	return st.DHT.Provided
}

// TestDiscoveryWithOnlyABootstrapAddress: one bootstrap node, and a device, a
// server and three more peers that know only its address.
func TestDiscoveryWithOnlyABootstrapAddress(t *testing.T) {
	boot := startDaemonWith(t, []string{"--dht-server"}, tcpListen)
	viaBoot := []string{"--bootstrap", boot.addr(t, "tcp")}
	device := startDaemonWith(t, viaBoot, tcpListen)
	server := startDaemonWith(t, viaBoot, tcpListen)
	p1, p2, p3 := startDaemonWith(t, viaBoot, tcpListen), startDaemonWith(t, viaBoot, tcpListen), startDaemonWith(t, viaBoot, tcpListen)

	ok(t, "sg", "create", sg, "--open", "--data", device.dir)
	path, data := writeRandomFile(t, 2<<20)
	first := strings.TrimSpace(ok(t, "put", path, "--sg", sg, "--data", device.dir))

	// p3 joins by the syncgroup ID alone, and holds the announcements of the
	// next blob from the device itself: its signpost names only the device.
	eventuallyOK(t, "sg", "join", sg, "--data", p3.dir)
	path2, data2 := writeRandomFile(t, 1<<20)
	second := strings.TrimSpace(ok(t, "put", path2, "--sg", sg, "--data", device.dir))
	eventually(t, "p3 to hold the announcement", func() bool { return entries(t, p3) == entries(t, device) })

	// The server joins by the syncgroup ID alone and fetches both blobs.
	eventuallyOK(t, "sg", "join", sg, "--role", "server", "--data", server.dir)
	for _, ref := range []string{first, second} {
		eventually(t, "the server to fetch the device's blob", func() bool { return held(t, server, ref) })
	}
	if r := peer(t, "get", first, "--data", server.dir); !bytes.Equal([]byte(r.stdout), data) {
		t.Fatal("server's copy differs")
	}
	eventually(t, "the server to provide both blobs and the rendezvous", func() bool { return provided(t, server) >= 3 })

	// The device goes away: p3's signpost for the second blob names only the
	// device, so p3 finds the server through its provider record.
	device.stop(t)
	r := peer(t, "get", second, "--data", p3.dir)
	if r.code != 0 || !bytes.Equal([]byte(r.stdout), data2) {
		t.Fatalf("p3's get with the only known location gone: exit %d: %s", r.code, r.stderr)
	}

	// A peer is reached by its bare peer ID, and found again after it
	// restarts on another port.
	path3, data3 := writeRandomFile(t, 500_000)
	pub := strings.TrimSpace(ok(t, "put", path3, "--public", "--data", p1.dir))
	bare := "/p2p/" + p1.id
	r = peer(t, "get", pub, "--from", bare, "--data", p2.dir)
	if r.code != 0 || !bytes.Equal([]byte(r.stdout), data3) {
		t.Fatalf("get by bare peer ID: exit %d: %s", r.code, r.stderr)
	}
	oldAddr := p1.addr(t, "tcp")
	p1.stop(t)
	p1 = runDaemonWith(t, p1.dir, viaBoot, tcpListen)
	if p1.addr(t, "tcp") == oldAddr {
		t.Fatal("p1 came back on the same port; the test needs a new one")
	}
	path4, data4 := writeRandomFile(t, 400_000)
	pub2 := strings.TrimSpace(ok(t, "put", path4, "--public", "--data", p1.dir))
	r = peer(t, "get", pub2, "--from", bare, "--data", p2.dir) // p2 knows only the old address
	if r.code != 0 || !bytes.Equal([]byte(r.stdout), data4) {
		t.Fatalf("get by peer ID after a restart on a new port: exit %d: %s", r.code, r.stderr)
	}
}
