package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// SgServiceName is the resource-manager service that owns syncgroup streams.
const SgServiceName = "blobsync.sg"

// sgReserveThreshold: a syncgroup frame larger than this is reserved in the
// stream's resource scope before its buffer is allocated.
const sgReserveThreshold = 64 << 10

// errNoMemory: the resource manager refused memory for a frame.
var errNoMemory = errors.New("out of memory for the frame")

// sgStatuses maps the errors a Syncgroups may return to wire statuses; any
// other error is INTERNAL.
var sgStatuses = []struct {
	err    error
	status pb.Status
}{
	{ErrUnknownSyncgroup, pb.Status_NOT_FOUND},
	{ErrNotMember, pb.Status_FORBIDDEN},
	{ErrJoinRefused, pb.Status_REFUSED},
	{ErrBadRequest, pb.Status_BAD_REQUEST},
}

// SgServer answers the syncgroup protocol on a host for the syncgroups it is
// told to serve, with a Syncgroups. One handler, registered under the
// syncgroup prefix, matches the IDs served.
type SgServer struct {
	h      host.Host
	groups Syncgroups
	cfg    config

	handlers *handlerGroup
	ctx      context.Context // the handlers': ends at Close

	mu     sync.Mutex
	closed bool
	served map[string]bool
}

// NewSgServer returns an SgServer for h answering with groups. It serves no
// syncgroup until Serve is called.
func NewSgServer(h host.Host, groups Syncgroups, opts ...Option) (*SgServer, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if h == nil || groups == nil {
		return nil, errors.New("protocol: NewSgServer needs a host and a Syncgroups")
	}
	s := &SgServer{h: h, groups: groups, cfg: cfg, served: map[string]bool{}, handlers: newHandlerGroup()}
	s.ctx = s.handlers.ctx
	// One handler for every well-formed syncgroup ID: identify advertises only
	// the prefix (a long list of IDs cannot crowd addresses out of its
	// message), and a syncgroup this peer is not in is answered NOT_FOUND, the
	// same as one it is in but the caller is not: strangers cannot tell which
	// syncgroups this peer belongs to.
	h.SetStreamHandlerMatch(sgPrefixID, func(id protocol.ID) bool { return datastore.CheckSyncgroupID(string(id)) == nil }, s.handle)
	return s, nil
}

// sgPrefixID is the protocol ID the syncgroup handler is registered under.
const sgPrefixID = protocol.ID(datastore.SyncgroupPrefix)

// Serve starts answering syncgroup id's protocol (protocol ID id). Serving an
// ID already served, or serving after Close, does nothing; an ID that is not
// a well-formed syncgroup ID is logged and not served.
func (s *SgServer) Serve(id string) {
	if err := datastore.CheckSyncgroupID(id); err != nil {
		s.cfg.log.Warn("syncgroup protocol: not serving", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.served[id] {
		return
	}
	s.served[id] = true
}

// Stop stops answering syncgroup id's protocol: new streams for it get the
// unknown-syncgroup answer. Streams already being answered finish.
func (s *SgServer) Stop(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.served, id)
}

// Close removes every handler, resets the streams being answered (their
// Syncgroups calls see their context end) and waits for the handlers to return.
func (s *SgServer) Close() error {
	s.mu.Lock()
	s.closed = true
	clear(s.served)
	s.mu.Unlock()
	s.h.RemoveStreamHandler(sgPrefixID)
	s.handlers.close()
	return nil
}

func (s *SgServer) serving(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served[id]
}

func (s *SgServer) handle(st network.Stream) {
	s.handlers.run(st, s.handleStream, func(err error) {
		s.cfg.log.Debug("syncgroup stream failed", "sg", st.Protocol(), "peer", st.Conn().RemotePeer(), "err", err)
	})
}

func (s *SgServer) handleStream(st network.Stream) error {
	if err := st.Scope().SetService(SgServiceName); err != nil {
		return fmt.Errorf("attaching to service: %w", err)
	}
	deadline := time.Now().Add(s.cfg.requestTimeout)
	if err := st.SetDeadline(deadline); err != nil {
		return err
	}
	var req pb.SgRequest
	release, err := readMsgReserving(st, st.Scope(), network.ReservationPriorityMedium, &req, MaxSgFrameSize)
	if errors.Is(err, errNoMemory) {
		return writeMsg(st, &pb.SgResponse{Status: pb.Status_BUSY, Message: "out of memory for syncgroup requests"})
	}
	if err != nil {
		return err
	}
	defer release()

	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	resp := s.respond(ctx, string(st.Protocol()), st.Conn().RemotePeer(), &req)
	if n := proto.Size(resp); n > sgReserveThreshold {
		if err := st.Scope().ReserveMemory(n, network.ReservationPriorityMedium); err != nil {
			return writeMsg(st, &pb.SgResponse{Status: pb.Status_BUSY, Message: "out of memory for syncgroup responses"})
		}
		defer st.Scope().ReleaseMemory(n)
	}
	return writeMsg(st, resp)
}

// respond answers one request for syncgroup id from caller.
func (s *SgServer) respond(ctx context.Context, id string, caller peer.ID, req *pb.SgRequest) *pb.SgResponse {
	call, err := requestFromWire(req, time.Now())
	if err != nil {
		return s.fail(id, caller, err)
	}
	if !s.serving(id) { // answered as the Syncgroups answers a non-member
		return s.fail(id, caller, fmt.Errorf("%w: %s", ErrUnknownSyncgroup, id))
	}
	var resp *pb.SgResponse
	switch call.op {
	case opJoin:
		spec, err := s.groups.HandleJoin(ctx, id, caller, call.role, call.addrs)
		if err != nil {
			return s.fail(id, caller, err)
		}
		if spec.ID != id {
			return s.fail(id, caller, fmt.Errorf("joining %s gave the spec of %q", id, spec.ID))
		}
		resp = &pb.SgResponse{Status: pb.Status_OK, Spec: specToWire(spec)}
	case opMembers:
		ms, err := s.groups.HandleMembers(ctx, id, caller)
		if err != nil {
			return s.fail(id, caller, err)
		}
		resp = &pb.SgResponse{Status: pb.Status_OK, Members: membersToWire(ms)}
	case opPull:
		es, more, err := s.groups.HandlePull(ctx, id, caller, call.since, call.limit)
		if err != nil {
			return s.fail(id, caller, err)
		}
		if len(es) > call.limit {
			es, more = es[:call.limit], true
		}
		resp = &pb.SgResponse{Status: pb.Status_OK, Entries: entriesToWire(es), More: more}
		fitEntries(resp)
	case opAnnounce:
		n, err := s.groups.HandleAnnounce(ctx, id, caller, call.entries)
		if err != nil {
			return s.fail(id, caller, err)
		}
		resp = &pb.SgResponse{Status: pb.Status_OK, Accepted: uint32(min(max(n, 0), len(call.entries)))}
	}
	if n := proto.Size(resp); n > MaxSgFrameSize {
		return s.fail(id, caller, fmt.Errorf("a %d-byte response exceeds the %d-byte frame cap", n, MaxSgFrameSize))
	}
	return resp
}

// fitEntries drops a Pull response's last entries until it fits in a frame,
// saying that more remain. Dropping a suffix keeps each origin's entries a
// prefix in Seq order.
func fitEntries(resp *pb.SgResponse) {
	if proto.Size(resp) <= MaxSgFrameSize {
		return
	}
	entries := resp.Entries
	resp.Entries, resp.More = nil, true
	size := proto.Size(resp)
	for i, e := range entries {
		size += protowire.SizeTag(5) + protowire.SizeBytes(proto.Size(e))
		if size > MaxSgFrameSize {
			resp.Entries = entries[:i]
			return
		}
	}
	resp.Entries = entries
}

// fail maps err to a status. Errors the protocol names are sent with their
// detail; any other is logged and answered INTERNAL without it.
func (s *SgServer) fail(id string, caller peer.ID, err error) *pb.SgResponse {
	for _, m := range sgStatuses {
		if errors.Is(err, m.err) {
			return &pb.SgResponse{Status: m.status, Message: wireMessage(err, m.err)}
		}
	}
	if s.ctx.Err() != nil {
		s.cfg.log.Debug("syncgroup protocol: answering cut short by Close", "sg", id, "peer", caller, "err", err)
	} else {
		s.cfg.log.Warn("syncgroup protocol: answering failed", "sg", id, "peer", caller, "err", err)
	}
	return &pb.SgResponse{Status: pb.Status_INTERNAL, Message: "internal error"}
}

// wireMessage is err's detail for the caller, without the text of kind, which
// the status already says.
func wireMessage(err, kind error) string {
	s := err.Error()
	if s == kind.Error() {
		return ""
	}
	return errorMessage(errors.New(strings.TrimPrefix(s, kind.Error()+": ")))
}

// readMsgReserving is readMsg for frames that may be large: before allocating
// a frame over sgReserveThreshold bytes it reserves the frame's size in scope
// at prio, failing with an error wrapping errNoMemory if it cannot. On
// success the caller calls release once done with m.
func readMsgReserving(r io.Reader, scope network.ResourceScope, prio uint8, m proto.Message, maxSize int) (release func(), err error) {
	n, err := readUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(maxSize) {
		return nil, fmt.Errorf("%w: frame of %d bytes exceeds the %d-byte cap", ErrProtocol, n, maxSize)
	}
	release = func() {}
	if n > sgReserveThreshold {
		if err := scope.ReserveMemory(int(n), prio); err != nil {
			return nil, fmt.Errorf("%w: %d bytes: %w", errNoMemory, n, err)
		}
		release = func() { scope.ReleaseMemory(int(n)) }
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		release()
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: reading a %d-byte frame: %w", ErrProtocol, n, err)
	}
	if err := proto.Unmarshal(buf, m); err != nil {
		release()
		return nil, fmt.Errorf("%w: malformed message: %v", ErrProtocol, err)
	}
	return release, nil
}
