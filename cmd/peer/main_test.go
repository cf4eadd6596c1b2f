package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func testEnv(vars map[string]string) (env, *bytes.Buffer, *bytes.Buffer) {
	var out, errOut bytes.Buffer
	return env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(k string) string { return vars[k] }}, &out, &errOut
}

func TestParseAllowsFlagsAnywhere(t *testing.T) {
	e, _, _ := testEnv(map[string]string{"HOME": "/home/u"})
	c := newCommand("get", e)
	var from stringList
	c.fs.Var(&from, "from", "")
	o := c.fs.String("o", "", "")
	pos, err := c.parse([]string{"--from", "A", "REF", "-o", "out", "--from", "B", "--json"}, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pos, []string{"REF"}) || *o != "out" || !slices.Equal(from, stringList{"A", "B"}) || !c.json {
		t.Fatalf("pos %v, o %q, from %v, json %v", pos, *o, from, c.json)
	}
	if c.dataDir != "/home/u/.blobsync" {
		t.Fatalf("data dir %q", c.dataDir)
	}
	if _, err := newCommand("put", e).parse([]string{"a", "b"}, 1, 1); !errors.Is(err, errUsage) {
		t.Fatalf("two arguments to a one-argument command: %v", err)
	}
	if _, err := newCommand("put", e).parse(nil, 1, 1); !errors.Is(err, errUsage) {
		t.Fatalf("missing argument: %v", err)
	}
	if pos, err := newCommand("put", e).parse([]string{"-"}, 1, 1); err != nil || pos[0] != "-" {
		t.Fatalf("stdin argument: %v, %v", pos, err)
	}
}

func TestResolveDataDir(t *testing.T) {
	for _, tc := range []struct {
		flag string
		vars map[string]string
		want string
	}{
		{"/x", map[string]string{"BLOBSYNC_DATA": "/y", "HOME": "/h"}, "/x"},
		{"", map[string]string{"BLOBSYNC_DATA": "/y", "HOME": "/h"}, "/y"},
		{"", map[string]string{"HOME": "/h"}, "/h/.blobsync"},
	} {
		got, err := resolveDataDir(tc.flag, func(k string) string { return tc.vars[k] })
		if err != nil || got != tc.want {
			t.Errorf("resolveDataDir(%q, %v) = %q, %v; want %q", tc.flag, tc.vars, got, err, tc.want)
		}
	}
	if _, err := resolveDataDir("", func(string) string { return "" }); err == nil {
		t.Error("no flag, no BLOBSYNC_DATA, no HOME: no error")
	}
}

func TestReportExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		out  string
	}{
		{nil, 0, ""},
		{errors.New("boom\nsecond line"), 1, "peer: boom; second line\n"},
		{errUsage, 2, "peer: usage (see peer help)\n"},
		{&exitError{code: 1}, 1, ""},
		{&exitError{code: 3, msg: "why"}, 3, "peer: why\n"},
	} {
		var buf bytes.Buffer
		if code := report(tc.err, &buf); code != tc.code || buf.String() != tc.out {
			t.Errorf("report(%v) = %d, %q; want %d, %q", tc.err, code, buf.String(), tc.code, tc.out)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 64 << 20: "64.0 MiB", 3 << 40: "3.0 TiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestDemo runs the README's first command in-process.
func TestDemo(t *testing.T) {
	e, out, errOut := testEnv(map[string]string{"HOME": t.TempDir()})
	if err := run(t.Context(), []string{"demo", "--size", "3000000"}, e); err != nil {
		t.Fatalf("demo: %v (stderr %s)", err, errOut)
	}
	for _, want := range []string{"device   put 2.9 MiB blob bafkr4i", "server-1 holds a verified, byte-identical copy", "server-2 holds a verified, byte-identical copy", "demo complete"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	e, _, _ := testEnv(nil)
	if err := run(t.Context(), []string{"nope"}, e); !errors.Is(err, errUsage) {
		t.Fatalf("unknown command: %v", err)
	}
	if err := run(t.Context(), nil, e); report(err, &bytes.Buffer{}) != 2 {
		t.Fatalf("no command: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1000": 1000, "10MB": 10_000_000, "1.5GiB": 3 << 29, "512k": 512_000, "2Ti": 2 << 40, " 7 B": 7} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ten", "-5", "5XB", "1e30", "MB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// TestInitKeepsADaemonsPutInProgress (review finding): peer init on a data
// directory in use does not remove what a running daemon is writing.
func TestInitKeepsADaemonsPutInProgress(t *testing.T) {
	dir := t.TempDir()
	if _, err := initDataDir(layout(dir)); err != nil {
		t.Fatal(err)
	}
	inProgress := filepath.Join(dir, "blobs", "partial", "put-12345")
	if err := os.WriteFile(inProgress, []byte("half a blob"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := initDataDir(layout(dir)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inProgress); err != nil {
		t.Fatalf("init removed a put in progress: %v", err)
	}
}

// TestBenchJSONKeys: the keys of peer bench --json are a contract.
func TestBenchJSONKeys(t *testing.T) {
	b, err := json.Marshal(benchResult{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"fetch_mbps", "raw_stream_mbps", "fetch_ratio", "quic_fetch_ratio", "replication_p50_ms",
		"replication_p99_ms", "small_blobs_per_s", "fetcher_1m_pending_mib", "fetcher_sched_per_s"} {
		if _, ok := m[k]; !ok {
			t.Errorf("peer bench --json lacks %q", k)
		}
	}
	var out bytes.Buffer
	printBench(&out, benchResult{FetchRatio: 0.9, ReplicationP50ms: 80}, func(string) bool { return true })
	for _, want := range []string{"fetch_ratio", "≥ 0.85", "yes", "replication_p50_ms", "< 50", "NO"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, out.String())
		}
	}
	// A measurement not run (--only) shows no figure and no verdict.
	out.Reset()
	printBench(&out, benchResult{}, func(m string) bool { return m == "fetcher" })
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "replication_p50_ms") && (!strings.Contains(line, " - ") || strings.Contains(line, "yes") || strings.Contains(line, "NO")) {
			t.Errorf("a measurement not run is shown as %q", line)
		}
	}
}

// The peer command runs with extraProcs Ps more than the runtime's default,
// unless GOMAXPROCS says otherwise.
func TestRaiseProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	raiseProcs(func(string) string { return "3" })
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("with GOMAXPROCS set: %d Ps, want %d", got, before)
	}
	raiseProcs(func(string) string { return "" })
	if got := runtime.GOMAXPROCS(0); got != before+extraProcs {
		t.Fatalf("%d Ps, want %d", got, before+extraProcs)
	}
}

// Each throughput transfer goes first in as many rounds as the other.
func TestBenchRoundsAreEven(t *testing.T) {
	for name, s := range map[string]benchSizes{"full": fullSizes, "quick": quickSizes} {
		for transport, n := range map[string]int{"tcp": s.rounds, "quic": s.quicRounds} {
			if n < 2 || n%2 != 0 {
				t.Errorf("%s, %s: %d throughput rounds, want an even number", name, transport, n)
			}
		}
	}
}
