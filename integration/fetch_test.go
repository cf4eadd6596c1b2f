package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const (
	tcpListen  = "/ip4/127.0.0.1/tcp/0"
	quicListen = "/ip4/127.0.0.1/udp/0/quic-v1"
)

// TestFetch64MiB: a 64 MiB blob put on A is fetched by B with --from,
// byte-identical, over TCP and over QUIC.
func TestFetch64MiB(t *testing.T) {
	a := startDaemon(t, tcpListen, quicListen)
	path, data := writeRandomFile(t, 64<<20)
	ref := strings.TrimSpace(ok(t, "put", path, "--public", "--data", a.dir))
	if !strings.HasPrefix(ref, "bafkr4i") {
		t.Fatalf("put printed %q, want a BlobRef", ref)
	}

	for _, transport := range []string{"tcp", "quic-v1"} {
		t.Run(transport, func(t *testing.T) {
			listen := map[string]string{"tcp": tcpListen, "quic-v1": quicListen}[transport]
			b := startDaemon(t, listen)
			if r := peer(t, "has", ref, "--data", b.dir); r.code != 1 {
				t.Fatalf("has before get: exit %d, want 1", r.code)
			}
			out := filepath.Join(t.TempDir(), "out")
			ok(t, "get", ref, "--from", a.addr(t, transport), "-o", out, "--data", b.dir)
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("fetched %d bytes differ from the %d put", len(got), len(data))
			}
			if size := strings.TrimSpace(ok(t, "has", ref, "--data", b.dir)); size != strconv.Itoa(len(data)) {
				t.Fatalf("has printed %q, want %d", size, len(data))
			}

			var st struct {
				Peers []struct {
					ID    string
					Addrs []string
				}
				Blobs     int
				Transfers struct {
					BytesReceived int64 `json:"bytes_received"`
				}
			}
			if err := json.Unmarshal([]byte(ok(t, "status", "--json", "--data", b.dir)), &st); err != nil {
				t.Fatal(err)
			}
			if st.Blobs != 1 || st.Transfers.BytesReceived != int64(len(data)) {
				t.Fatalf("status: %d blobs, %d bytes received", st.Blobs, st.Transfers.BytesReceived)
			}
			via := ""
			for _, p := range st.Peers {
				if p.ID == a.id {
					via = strings.Join(p.Addrs, " ")
				}
			}
			if !strings.Contains(via, "/"+transport) {
				t.Fatalf("connection to A is via %q, want %s", via, transport)
			}

			// A second get is served from the local copy, to stdout.
			r := peer(t, "get", ref, "--data", b.dir)
			if r.code != 0 || !bytes.Equal([]byte(r.stdout), data) {
				t.Fatalf("get to stdout: exit %d, %d bytes", r.code, len(r.stdout))
			}
		})
	}
}
