package blobsync

import (
	"bytes"
	"crypto/rand"
	"slices"
	"testing"
	"time"
)

// BenchmarkReplication measures, per 1 MiB blob put on a device, the time
// from the start of the put until each of 3 servers of the syncgroup holds the
// verified blob, nobody asking them. Run with -benchtime 50x (or more) for
// p99: it reports replication_p50_ms, replication_p99_ms and put_p50_ms.
func BenchmarkReplication(b *testing.B) {
	device := newNode(b)
	if _, err := device.CreateSyncgroup(b.Context(), testSG, ACL{Open: true}, RoleNormal); err != nil {
		b.Fatal(err)
	}
	var servers []*Node
	for range 3 {
		s := newNode(b)
		if _, err := s.JoinSyncgroup(b.Context(), testSG, addrInfo(device), RoleServer); err != nil {
			b.Fatal(err)
		}
		servers = append(servers, s)
	}
	for {
		g, _ := device.Syncgroup(testSG)
		if len(g.Members) == 4 {
			break
		}
		time.Sleep(time.Millisecond)
	}

	var replication, put []time.Duration
	data := make([]byte, 1<<20)
	for b.Loop() {
		rand.Read(data)
		start := time.Now()
		ref, _, err := device.Put(b.Context(), bytes.NewReader(data), PutOptions{Syncgroups: []string{testSG}})
		if err != nil {
			b.Fatal(err)
		}
		put = append(put, time.Since(start))
		for _, s := range servers {
			for deadline := start.Add(30 * time.Second); ; {
				if _, ok, _ := s.Has(ref); ok {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("a server did not fetch %s within 30 s", ref)
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
		replication = append(replication, time.Since(start))
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(percentileMS(replication, 50), "replication_p50_ms")
	b.ReportMetric(percentileMS(replication, 99), "replication_p99_ms")
	b.ReportMetric(percentileMS(put, 50), "put_p50_ms")
}

// percentileMS returns the p-th percentile of ds in milliseconds (nearest rank).
func percentileMS(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return float64(s[max(i-1, 0)].Microseconds()) / 1000
}
