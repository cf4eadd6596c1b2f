package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// scrape fetches a daemon's /metrics and returns its samples by name (labels
// included, as printed).
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	m, err := scrapeErr(addr)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// scrapeErr is scrape without a testing.T (for goroutines other than the
// test's). It leaves no connection open in the daemon between scrapes, so
// that checkInvariants counts none.
func scrapeErr(addr string) (map[string]float64, error) {
	resp, err := noKeepAlive.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("/metrics: %s: %s", resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// TestMetricsMoveWhenABlobIsFetched scrapes a server's /metrics before and
// after it fetches a blob in the background.
func TestMetricsMoveWhenABlobIsFetched(t *testing.T) {
	device := startDaemon(t, tcpListen)
	server := startDaemonWith(t, []string{"--metrics", "127.0.0.1:0"}, tcpListen)
	var st struct{ Metrics string }
	if err := json.Unmarshal([]byte(ok(t, "status", "--json", "--data", server.dir)), &st); err != nil || st.Metrics == "" {
		t.Fatalf("status names no metrics address: %+v, %v", st, err)
	}
	before := scrape(t, st.Metrics)
	for _, name := range []string{"blobsync_blobs_fetched_total", "blobsync_bytes_received_total", "blobsync_blobs_held", "blobsync_fetch_queue_pending", "blobsync_fetch_in_flight"} {
		if v, ok := before[name]; !ok || v != 0 {
			t.Fatalf("before any fetch %s = %v (present %v)", name, v, ok)
		}
	}
	libp2p := 0
	for name := range before {
		if strings.HasPrefix(name, "libp2p_") {
			libp2p++
		}
	}
	if libp2p == 0 {
		t.Error("go-libp2p's own metrics are not served")
	}

	ok(t, "sg", "create", sg, "--open", "--data", device.dir)
	ok(t, "sg", "join", sg, "--via", device.addr(t, "tcp"), "--role", "server", "--data", server.dir)
	path, data := writeRandomFile(t, 300_000)
	ref := strings.TrimSpace(ok(t, "put", path, "--sg", sg, "--data", device.dir))
	eventually(t, "the server to fetch", func() bool { return held(t, server, ref) })
	var after map[string]float64
	eventually(t, "the fetch to be counted", func() bool {
		after = scrape(t, st.Metrics)
		return after[`blobsync_fetch_attempts_total{result="ok"}`] == 1
	})
	for name, want := range map[string]float64{
		"blobsync_blobs_fetched_total":          1,
		"blobsync_bytes_received_total":         float64(len(data)),
		"blobsync_blobs_held":                   1,
		"blobsync_blob_bytes_held":              float64(len(data)),
		"blobsync_fetch_duration_seconds_count": 1,
		"blobsync_syncgroups":                   1,
	} {
		if after[name] != want {
			t.Errorf("after the fetch %s = %v, want %v", name, after[name], want)
		}
	}
	if after["blobsync_fetch_duration_seconds_sum"] <= 0 {
		t.Error("the fetch took no time")
	}
}
