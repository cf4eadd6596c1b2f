package blobsync

import (
	"context"
	"errors"
	"net"
	"os"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the node's Prometheus metrics: counters moved by fetch
// attempts, and values read from the node when scraped.
type metrics struct {
	attempts *prometheus.CounterVec // by result
	duration prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "blobsync", Name: "fetch_attempts_total",
			Help: "Background fetch attempts, by result: ok, or why they failed (canceled, local, bad_data, too_slow, protocol, busy, network, not_found, other).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "blobsync", Name: "fetch_duration_seconds",
			Help:    "Time of successful background fetch attempts: locate, transfer, verify, store.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10), // 1 ms .. 4.4 min
		}),
	}
}

// observe records one fetch attempt (fetcher.WithObserver).
func (m *metrics) observe(_ datastore.Ref, took time.Duration, err error) {
	m.attempts.WithLabelValues(failureReason(err)).Inc()
	if err == nil {
		m.duration.Observe(took.Seconds())
	}
}

// failureReason names why a fetch failed, for the metrics' result label.
func failureReason(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	case errors.Is(err, ErrLocal):
		return "local"
	case errors.Is(err, datastore.ErrHashMismatch):
		return "bad_data"
	case errors.Is(err, protocol.ErrTooSlow):
		return "too_slow"
	case errors.Is(err, protocol.ErrProtocol):
		return "protocol"
	case errors.Is(err, protocol.ErrBusy), errors.Is(err, datastore.ErrBusy):
		return "busy"
	case transportFailure(err):
		return "network"
	case errors.Is(err, ErrNoLocation), errors.Is(err, protocol.ErrNotFound):
		return "not_found"
	}
	return "other"
}

// transportFailure reports whether err is a peer unreachable or a stream
// failing (reset, timed out) rather than anything a peer said.
func transportFailure(err error) bool {
	var se *network.StreamError
	var de *swarm.DialError
	var ne net.Error
	return errors.Is(err, network.ErrReset) || errors.As(err, &se) || errors.As(err, &de) ||
		errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

var (
	descQueue     = prometheus.NewDesc("blobsync_fetch_queue_pending", "Blobs the server fetcher has yet to fetch, in flight included.", nil, nil)
	descInFlight  = prometheus.NewDesc("blobsync_fetch_in_flight", "Fetches under way.", nil, nil)
	descSent      = prometheus.NewDesc("blobsync_bytes_sent_total", "Blob bytes sent to peers.", nil, nil)
	descReceived  = prometheus.NewDesc("blobsync_bytes_received_total", "Blob bytes received from peers.", nil, nil)
	descServed    = prometheus.NewDesc("blobsync_blobs_served_total", "Blob transfers served to the end.", nil, nil)
	descFetched   = prometheus.NewDesc("blobsync_blobs_fetched_total", "Blobs fetched and verified.", nil, nil)
	descHeld      = prometheus.NewDesc("blobsync_blobs_held", "Verified blobs held here.", nil, nil)
	descHeldBytes = prometheus.NewDesc("blobsync_blob_bytes_held", "Bytes of the verified blobs held here.", nil, nil)
	descGroups    = prometheus.NewDesc("blobsync_syncgroups", "Syncgroups this peer belongs to.", nil, nil)
)

// Collector returns the node's Prometheus metrics, to register where the
// embedding server exposes its own (peer daemon --metrics serves them).
func (n *Node) Collector() prometheus.Collector { return nodeCollector{n} }

type nodeCollector struct{ n *Node }

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueue, descInFlight, descSent, descReceived, descServed, descFetched, descHeld, descHeldBytes, descGroups} {
		ch <- d
	}
	c.n.metrics.attempts.Describe(ch)
	c.n.metrics.duration.Describe(ch)
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	pending, inFlight, _ := n.fetcher.Snapshot(0)
	st := n.Stats()
	held, heldBytes := n.blobs.Held()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(descQueue, float64(pending))
	gauge(descInFlight, float64(inFlight))
	counter(descSent, float64(st.BytesSent))
	counter(descReceived, float64(st.BytesReceived))
	counter(descServed, float64(st.BlobsServed))
	counter(descFetched, float64(st.BlobsFetched))
	gauge(descHeld, float64(held))
	gauge(descHeldBytes, float64(heldBytes))
	gauge(descGroups, float64(len(n.groups.Groups())))
	n.metrics.attempts.Collect(ch)
	n.metrics.duration.Collect(ch)
}
