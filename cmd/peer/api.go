package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blobsync/blobsync"
	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/p2p"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The control API: JSON over HTTP on the daemon's unix socket. Errors are
// {"error": "..."} with a 4xx or 5xx status.

type idResponse struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

type putResponse struct {
	Ref  blobsync.Ref `json:"ref"`
	Size int64        `json:"size"`
}

type hasResponse struct {
	Ref  blobsync.Ref `json:"ref"`
	Held bool         `json:"held"`
	Size int64        `json:"size,omitempty"`
}

type fetchRequest struct {
	Ref  string   `json:"ref"`
	From []string `json:"from,omitempty"`
}

// fetchEvent is one line of a fetch's NDJSON answer: progress, then a last
// line with Size (success) or Error.
type fetchEvent struct {
	Done  int64  `json:"done,omitempty"`
	Total int64  `json:"total,omitempty"`
	Final bool   `json:"final,omitempty"`
	Size  int64  `json:"size,omitempty"`
	Error string `json:"error,omitempty"`
}

type peerStatus struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

type statusResponse struct {
	ID        string               `json:"id"`
	Addrs     []string             `json:"addrs"`
	Uptime    string               `json:"uptime"`
	Peers     []peerStatus         `json:"peers"`
	Blobs     int                  `json:"blobs"`
	BlobBytes int64                `json:"blob_bytes"`
	Owned     int                  `json:"owned"`  // blobs held with shares or a pin
	Pinned    int                  `json:"pinned"` // blobs pinned
	Droppable int                  `json:"droppable"`
	Partials  []datastore.BlobInfo `json:"partials"`
	Transfers blobsync.Stats       `json:"transfers"`
	Fetch     fetchQueueView       `json:"fetch_queue"`
	DHT       dhtView              `json:"dht"`
	Metrics   string               `json:"metrics,omitempty"` // HOST:PORT of /metrics
}

type dhtView struct {
	Server       bool  `json:"server"`
	RoutingTable int   `json:"routing_table"` // DHT servers known
	Provided     int64 `json:"provided"`      // provider records published
	Failed       int64 `json:"failed"`        // provider records that failed
}

// fetchQueueView is the server fetcher's queue as the status shows it.
type fetchQueueView struct {
	Pending  int             `json:"pending"`
	InFlight int             `json:"in_flight"`
	Blobs    []fetchBlobView `json:"blobs"`
	LastScan struct {
		At      time.Time `json:"at"`
		TookMS  float64   `json:"took_ms"`
		Started int       `json:"started"`
	} `json:"last_scan"`
}

type fetchBlobView struct {
	Ref         blobsync.Ref `json:"ref"`
	Attempts    uint32       `json:"attempts"`
	InFlight    bool         `json:"in_flight"`
	NextAttempt *time.Time   `json:"next_attempt,omitempty"`
	LastError   string       `json:"last_error,omitempty"`
}

// statusQueueLimit is how many queued blobs the status lists.
const statusQueueLimit = 50

func queueView(q blobsync.FetchQueue) fetchQueueView {
	v := fetchQueueView{Pending: q.Pending, InFlight: q.InFlight, Blobs: []fetchBlobView{}}
	for _, b := range q.Blobs {
		bv := fetchBlobView{Ref: b.Ref, Attempts: b.Attempts, InFlight: b.InFlight}
		if b.LastError != "" {
			bv.LastError = oneLine(errors.New(b.LastError))
		}
		if !b.InFlight {
			next := b.NextAttempt
			bv.NextAttempt = &next
		}
		v.Blobs = append(v.Blobs, bv)
	}
	v.LastScan.At, v.LastScan.TookMS, v.LastScan.Started = q.LastScan.At, float64(q.LastScan.Took.Microseconds())/1000, q.LastScan.Started
	return v
}

type api struct {
	node    *blobsync.Node
	dht     *p2p.DHT
	log     *slog.Logger
	started time.Time
	metrics string // where Prometheus metrics are served, if they are
}

func (a *api) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/id", a.id)
	mux.HandleFunc("POST /v1/put", a.put)
	mux.HandleFunc("GET /v1/has/{ref}", a.has)
	mux.HandleFunc("GET /v1/blobs", a.list)
	mux.HandleFunc("GET /v1/blob/{ref}", a.blob)
	mux.HandleFunc("POST /v1/fetch", a.fetch)
	mux.HandleFunc("GET /v1/status", a.status)
	mux.HandleFunc("POST /v1/sg/create", a.sgCreate)
	mux.HandleFunc("POST /v1/sg/join", a.sgJoin)
	mux.HandleFunc("GET /v1/sg", a.sgList)
	mux.HandleFunc("GET /v1/sg/members", a.sgMembers)
	mux.HandleFunc("POST /v1/pin/{ref}", a.pin(true))
	mux.HandleFunc("POST /v1/unpin/{ref}", a.pin(false))
	mux.HandleFunc("POST /v1/gc", a.gc)
	return mux
}

func fail(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": oneLine(err)})
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func pathRef(w http.ResponseWriter, r *http.Request) (blobsync.Ref, bool) {
	ref, err := blobsync.ParseRef(r.PathValue("ref"))
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return blobsync.Ref{}, false
	}
	return ref, true
}

// p2pAddrs returns h's listen addresses with /p2p/<id> appended.
func p2pAddrs(h host.Host) []string {
	addrs, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
	if err != nil {
		return nil
	}
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	sort.Strings(out)
	return out
}

func (a *api) id(w http.ResponseWriter, _ *http.Request) {
	h := a.node.Host()
	reply(w, idResponse{ID: h.ID().String(), Addrs: p2pAddrs(h)})
}

func (a *api) put(w http.ResponseWriter, r *http.Request) {
	public, err := strconv.ParseBool(r.URL.Query().Get("public"))
	if err != nil && r.URL.Query().Has("public") {
		fail(w, http.StatusBadRequest, fmt.Errorf("public=%q is not a boolean", r.URL.Query().Get("public")))
		return
	}
	sgs := r.URL.Query()["sg"]
	ref, size, err := a.node.Put(r.Context(), r.Body, blobsync.PutOptions{Public: public, Syncgroups: sgs})
	if err != nil {
		fail(w, putStatus(err), err)
		return
	}
	a.log.Info("blob put", "ref", ref, "size", size, "public", public, "sg", sgs)
	reply(w, putResponse{Ref: ref, Size: size})
}

// putStatus maps a put error to an HTTP status: the caller's mistakes are 4xx.
func putStatus(err error) int {
	if errors.Is(err, datastore.ErrBadSyncgroupID) || errors.Is(err, protocol.ErrUnknownSyncgroup) {
		return sgStatus(err)
	}
	return http.StatusInternalServerError
}

func (a *api) has(w http.ResponseWriter, r *http.Request) {
	ref, ok := pathRef(w, r)
	if !ok {
		return
	}
	size, held, err := a.node.Has(ref)
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	reply(w, hasResponse{Ref: ref, Held: held, Size: size})
}

func (a *api) list(w http.ResponseWriter, r *http.Request) {
	blobs, err := a.node.List(r.Context())
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	sort.Slice(blobs, func(i, j int) bool { return blobs[i].Ref.String() < blobs[j].Ref.String() })
	reply(w, blobs)
}

func (a *api) blob(w http.ResponseWriter, r *http.Request) {
	ref, ok := pathRef(w, r)
	if !ok {
		return
	}
	f, _, err := a.node.Open(ref)
	if errors.Is(err, datastore.ErrNotFound) {
		fail(w, http.StatusNotFound, fmt.Errorf("blob %s is not held here", ref))
		return
	}
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	defer f.Close()
	if err := a.node.Touch(r.Context(), ref); err != nil {
		a.log.Warn("recording a read", "ref", ref, "err", err)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// fetch fetches a blob into the node, answering with NDJSON progress lines
// and a final line. Cancelling the request cancels the fetch; what arrived is
// kept for a resume.
func (a *api) fetch(w http.ResponseWriter, r *http.Request) {
	var req fetchRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("fetch request: %v", err))
		return
	}
	ref, err := blobsync.ParseRef(req.Ref)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	var from []peer.AddrInfo
	for _, s := range req.From {
		ai, err := parsePeerAddr(s)
		if err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		from = append(from, ai)
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	// Progress comes from the transfer's goroutine, which may outlive this
	// handler (another caller can keep the transfer going): nothing is
	// written once the handler has returned.
	var mu sync.Mutex
	finished := false
	defer func() { mu.Lock(); finished = true; mu.Unlock() }()
	send := func(ev fetchEvent) {
		mu.Lock()
		defer mu.Unlock()
		if finished {
			return
		}
		enc.Encode(ev)
		if flusher != nil {
			flusher.Flush()
		}
	}
	var last atomic.Int64 // unix nanoseconds of the last progress line
	progress := func(done, total int64) {
		if now := time.Now().UnixNano(); now-last.Load() >= int64(100*time.Millisecond) || done == total {
			last.Store(now)
			send(fetchEvent{Done: done, Total: total})
		}
	}
	start := time.Now()
	size, err := a.node.Fetch(r.Context(), ref, blobsync.FetchOptions{From: from, Progress: protocol.Progress(progress)})
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			a.log.Warn("fetch failed", "ref", ref, "err", err)
		}
		send(fetchEvent{Final: true, Error: oneLine(err)})
		return
	}
	a.log.Info("blob fetched", "ref", ref, "size", size, "took", time.Since(start).Round(time.Millisecond))
	send(fetchEvent{Final: true, Size: size})
}

func (a *api) status(w http.ResponseWriter, r *http.Request) {
	h := a.node.Host()
	st := statusResponse{
		ID: h.ID().String(), Addrs: p2pAddrs(h), Uptime: time.Since(a.started).Round(time.Second).String(),
		Peers: []peerStatus{}, Transfers: a.node.Stats(), Fetch: queueView(a.node.FetchQueue(statusQueueLimit)),
	}
	ds := a.node.DiscoveryStats()
	st.DHT = dhtView{Server: a.dht.Server(), RoutingTable: a.dht.RoutingTableSize(), Provided: ds.Provided, Failed: ds.Failed}
	st.Metrics = a.metrics
	for _, p := range h.Network().Peers() {
		ps := peerStatus{ID: p.String()}
		for _, c := range h.Network().ConnsToPeer(p) {
			ps.Addrs = append(ps.Addrs, c.RemoteMultiaddr().String())
		}
		st.Peers = append(st.Peers, ps)
	}
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].ID < st.Peers[j].ID })
	blobs, err := a.node.List(r.Context())
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	st.Blobs = len(blobs)
	for _, b := range blobs {
		st.BlobBytes += b.Size
		switch {
		case b.Owned():
			st.Owned++
		case b.Holders > 0:
			st.Droppable++
		}
		if b.Pinned {
			st.Pinned++
		}
	}
	if st.Partials, err = a.node.Partials(); err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	reply(w, st)
}
