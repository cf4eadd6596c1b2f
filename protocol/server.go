// Package protocol implements blobsync's wire protocols: /blobsync/blob/1.0.0,
// with which peers ask for blobs (HaveBlob) and transfer them with resume
// (GetBlob), and each syncgroup's own protocol (Join, Members, Pull, Announce).
package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"golang.org/x/time/rate"
)

// ID is the blob protocol's libp2p protocol ID.
const ID protocol.ID = "/blobsync/blob/1.0.0"

// ServiceName is the resource-manager service that owns blob streams.
const ServiceName = "blobsync.blob"

// Blobs is where a Server reads the blobs it serves.
type Blobs interface {
	// Open opens a held blob; an error wrapping datastore.ErrNotFound if not held.
	Open(ref datastore.Ref) (*os.File, int64, error)
}

// Policy decides what a caller may learn. A caller that may not be served a
// blob gets exactly the answer for an unknown blob.
type Policy interface {
	// MayServe reports whether caller may learn that this peer holds ref, and have it.
	MayServe(ctx context.Context, caller peer.ID, ref datastore.Ref) (bool, error)
	// VisibleSignpost returns this peer's signpost for ref, filtered to what caller may see.
	VisibleSignpost(ctx context.Context, caller peer.ID, ref datastore.Ref) (datastore.Signpost, error)
	// Offer returns the ownership shares this peer offers caller, which is
	// fetching ref from it at the given distances to a server (DESIGN §7).
	Offer(ctx context.Context, caller peer.ID, ref datastore.Ref, distance map[string]uint32) (map[string]int32, error)
	// Accepted records that caller, which fetched all of ref from this peer
	// at the given distances to a server, verified and holds it and took
	// shares; it grants at most what this peer has and would offer, atomically,
	// and reports whether this peer keeps its copy. The Server calls it once
	// per completed transfer, and never for a caller that did not fetch.
	Accepted(ctx context.Context, caller peer.ID, ref datastore.Ref, taken map[string]int32, distance map[string]uint32) (granted map[string]int32, keeping bool, err error)
}

// ServerStats counts what a Server has served.
type ServerStats struct {
	BytesSent   int64
	BlobsServed int64 // GetBlob transfers completed
}

// Server answers HaveBlob and GetBlob on a host.
type Server struct {
	h      host.Host
	blobs  Blobs
	policy Policy
	cfg    config
	bufs   sync.Pool
	rate   *rate.Limiter // nil: unlimited
	served servedLog     // completed transfers, for AcceptedBlobOwnership

	handlers *handlerGroup
	ctx      context.Context // the handlers': ends at Close

	bytesSent   atomic.Int64
	blobsServed atomic.Int64
}

// NewServer registers the blob protocol's handler on h.
func NewServer(h host.Host, blobs Blobs, policy Policy, opts ...Option) (*Server, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	s := &Server{h: h, blobs: blobs, policy: policy, cfg: cfg}
	s.bufs.New = func() any { b := make([]byte, cfg.bufferSize); return &b }
	if cfg.uploadRate > 0 {
		s.rate = rate.NewLimiter(rate.Limit(cfg.uploadRate), cfg.bufferSize)
	}
	s.handlers = newHandlerGroup()
	s.ctx = s.handlers.ctx
	h.SetStreamHandler(ID, s.handle)
	return s, nil
}

// Close removes the handler, resets the streams being served and waits for
// their handlers to return.
func (s *Server) Close() error {
	s.h.RemoveStreamHandler(ID)
	s.handlers.close()
	return nil
}

// Stats returns the counters so far.
func (s *Server) Stats() ServerStats {
	return ServerStats{BytesSent: s.bytesSent.Load(), BlobsServed: s.blobsServed.Load()}
}

func (s *Server) handle(st network.Stream) {
	s.handlers.run(st, s.handleStream, func(err error) {
		s.cfg.log.Debug("blob stream failed", "peer", st.Conn().RemotePeer(), "err", err)
	})
}

// handleStream serves the requests on st: one, or, once a GetBlob's
// acknowledgement is answered, the next ones the caller sends on the stream
// it keeps (reuse.go), each read within keptStreamWait.
func (s *Server) handleStream(st network.Stream) error {
	if err := st.Scope().SetService(ServiceName); err != nil {
		return fmt.Errorf("attaching to service: %w", err)
	}
	wait := s.cfg.requestTimeout
	for kept := false; ; kept = true {
		if err := st.SetDeadline(time.Now().Add(wait)); err != nil {
			return err
		}
		var req pb.Request
		if err := readMsg(st, &req, MaxRequestSize); err != nil {
			if kept && (errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded)) {
				return nil // the caller closed or left the stream it kept
			}
			return err
		}
		if err := st.SetDeadline(time.Now().Add(s.cfg.requestTimeout)); err != nil {
			return err
		}
		again, err := s.serve(st, &req)
		if err != nil || !again {
			return err
		}
		wait = keptStreamWait
	}
}

// serve answers req on st; again reports whether another request may
// follow on st (a GetBlob whose acknowledgement was answered).
func (s *Server) serve(st network.Stream, req *pb.Request) (again bool, err error) {
	caller := st.Conn().RemotePeer()
	ref, err := datastore.RefFromBytes(req.GetRef())
	if err != nil {
		return false, writeMsg(st, &pb.Response{Status: pb.Status_BAD_REQUEST, Message: errorMessage(err)})
	}
	switch req.GetOp() {
	case pb.Op_HAVE_BLOB:
		return false, writeMsg(st, s.haveBlob(caller, ref))
	case pb.Op_GET_BLOB:
		distance, err := distanceFromWire(req.GetDistance())
		if err != nil {
			return false, writeMsg(st, &pb.Response{Status: pb.Status_BAD_REQUEST, Message: errorMessage(err)})
		}
		sent, err := s.getBlob(st, caller, ref, req.GetOffset(), distance)
		if err != nil || !sent {
			return false, err
		}
		return s.ackOnStream(st, caller, ref)
	case pb.Op_ACCEPTED_BLOB_OWNERSHIP:
		return false, writeMsg(st, s.accepted(caller, ref, req.GetSharesTaken()))
	default:
		return false, writeMsg(st, &pb.Response{Status: pb.Status_BAD_REQUEST, Message: fmt.Sprintf("unknown op %d", req.GetOp())})
	}
}

// open returns ref's file if caller may have it; (nil, notFound, nil) otherwise.
func (s *Server) open(caller peer.ID, ref datastore.Ref) (*os.File, int64, *pb.Response) {
	ok, err := s.policy.MayServe(s.ctx, caller, ref)
	if err != nil {
		return nil, 0, s.internal(err)
	}
	if !ok {
		return nil, 0, nil
	}
	f, size, err := s.blobs.Open(ref)
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, s.internal(err)
	}
	return f, size, nil
}

func (s *Server) haveBlob(caller peer.ID, ref datastore.Ref) *pb.Response {
	f, size, fail := s.open(caller, ref)
	if fail != nil {
		return fail
	}
	if f != nil {
		f.Close()
		return &pb.Response{Status: pb.Status_OK, Size: uint64(size)}
	}
	return s.notFound(caller, ref)
}

// notFound is the one answer for unknown blobs and blobs the caller may not have.
func (s *Server) notFound(caller peer.ID, ref datastore.Ref) *pb.Response {
	sp, err := s.policy.VisibleSignpost(s.ctx, caller, ref)
	if err != nil {
		return s.internal(err)
	}
	return &pb.Response{Status: pb.Status_NOT_FOUND, Signpost: signpostToWire(sp)}
}

// accepted answers AcceptedBlobOwnership: only from a caller that may have
// the blob (anyone else gets the unknown-blob answer), and only for a
// transfer of the blob to it that this Server completed. Each transfer is
// granted once; acknowledging it again repeats that grant, so a recipient
// that crashed before recording it can still learn what it was given. The
// shares taken are as received, and checked here.
func (s *Server) accepted(caller peer.ID, ref datastore.Ref, wireTaken map[string]int32) *pb.Response {
	taken, err := sharesFromWire(wireTaken)
	if err != nil {
		return &pb.Response{Status: pb.Status_BAD_REQUEST, Message: errorMessage(err)}
	}
	ok, err := s.policy.MayServe(s.ctx, caller, ref)
	if err != nil {
		return s.internal(err)
	}
	if !ok {
		return &pb.Response{Status: pb.Status_NOT_FOUND}
	}
	e, fetched := s.served.ackBegin(caller, ref, time.Now())
	switch {
	case !fetched:
		return &pb.Response{Status: pb.Status_BAD_REQUEST, Message: "no completed transfer of this blob to you to acknowledge"}
	case e.state == ackGranted:
		return &pb.Response{Status: pb.Status_OK, SharesGranted: e.answer.granted, Keeping: e.answer.keeping}
	case e.state == ackPending:
		return &pb.Response{Status: pb.Status_BUSY, Message: "this transfer is being acknowledged already"}
	}
	granted, keeping, err := s.policy.Accepted(s.ctx, caller, ref, taken, e.distance)
	if err != nil {
		s.served.ackEnd(caller, ref, ackAnswer{}, false) // nothing granted: it may try again
		return s.internal(err)
	}
	s.served.ackEnd(caller, ref, ackAnswer{granted: granted, keeping: keeping}, true)
	return &pb.Response{Status: pb.Status_OK, SharesGranted: granted, Keeping: keeping}
}

// getBlob answers GetBlob; it reports whether all the bytes asked for were
// sent (and the transfer recorded, for an acknowledgement to follow).
func (s *Server) getBlob(st network.Stream, caller peer.ID, ref datastore.Ref, offset uint64, distance map[string]uint32) (bool, error) {
	f, size, fail := s.open(caller, ref)
	if fail != nil {
		return false, writeMsg(st, fail)
	}
	if f == nil {
		return false, writeMsg(st, &pb.Response{Status: pb.Status_NOT_FOUND})
	}
	defer f.Close()
	if offset > 0 && offset >= uint64(size) {
		return false, writeMsg(st, &pb.Response{Status: pb.Status_OFFSET_OUT_OF_RANGE, Size: uint64(size)})
	}
	if err := st.Scope().ReserveMemory(s.cfg.bufferSize, network.ReservationPriorityMedium); err != nil {
		return false, writeMsg(st, &pb.Response{Status: pb.Status_BUSY, Message: "out of memory for transfers"})
	}
	defer st.Scope().ReleaseMemory(s.cfg.bufferSize)
	offered, err := s.policy.Offer(s.ctx, caller, ref, distance)
	if err != nil {
		return false, writeMsg(st, s.internal(err))
	}
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	// A blob that fits in the buffer after the header goes out in one write
	// with it: one frame and one TLS record instead of two, which counts for
	// small blobs. A larger one goes from a mapping of its file where the
	// stream allows (mapped.go), else in reads aligned to the file's pages (a
	// 1 GiB fetch read from unaligned offsets measured 0.60–0.68 of the bare
	// stream with 2 Ps, against 0.65–0.78).
	want := size - int64(offset)
	hdr, err := appendMsg((*bp)[:0], &pb.Response{Status: pb.Status_OK, Size: uint64(size), SharesOffered: offered})
	if err != nil {
		return false, err
	}
	head := len(hdr)
	if int64(head)+want > int64(len(*bp)) {
		if _, err := st.Write(hdr); err != nil {
			return false, err
		}
		head = 0
	}
	g := newStallGuard(st, s.cfg)
	if err := g.arm(time.Now()); err != nil {
		return false, err
	}
	var sent int64
	if head == 0 && copiesInWrite(st) {
		count := func(n int) { s.bytesSent.Add(int64(n)) }
		sent, err = sendMapped(g, f, int64(offset), size, mapWindow, len(*bp), s.waitRate, count)
		if err != nil && !errors.Is(err, errMapUnsupported) {
			return false, fmt.Errorf("sending %s: %w", ref, err)
		}
	}
	src := io.NewSectionReader(f, int64(offset)+sent, want-sent)
	for {
		n, rerr := src.Read((*bp)[head:])
		if err := s.waitRate(n); err != nil {
			return false, err
		}
		if head+n > 0 {
			if _, err := g.Write((*bp)[:head+n]); err != nil {
				return false, fmt.Errorf("sending %s: %w", ref, err)
			}
			head = 0
			sent += int64(n)
			s.bytesSent.Add(int64(n))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return false, fmt.Errorf("reading %s: %w", ref, rerr)
		}
	}
	if sent != want {
		// Reset, so the caller sees a short stream rather than a short blob.
		return false, fmt.Errorf("reading %s: %d of %d bytes: the file shrank while served", ref, sent, want)
	}
	s.blobsServed.Add(1)
	s.served.record(caller, ref, distance, time.Now())
	return true, nil
}

// waitRate waits until the rate limit, if any, lets n more bytes go.
func (s *Server) waitRate(n int) error {
	if n == 0 || s.rate == nil {
		return nil
	}
	return s.rate.WaitN(s.ctx, n)
}

// internal logs err and answers INTERNAL without local details (paths).
func (s *Server) internal(err error) *pb.Response {
	s.cfg.log.Warn("blob protocol: serving failed", "err", err)
	return &pb.Response{Status: pb.Status_INTERNAL, Message: "internal error"}
}
