package protocol

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	msmux "github.com/multiformats/go-multistream"
	"google.golang.org/protobuf/proto"
)

// SgClient makes syncgroup protocol calls from a host.
//
// Every call takes the syncgroup ID, which is also the protocol ID spoken; an
// ID that is not well formed fails before anything is sent, with an error
// wrapping datastore.ErrBadSyncgroupID, and so does a request the protocol
// refuses (more than MaxAnnounceEntries entries, an invalid entry, role or
// watermark), with an error wrapping ErrBadRequest. A peer that does not serve
// the syncgroup gives ErrUnknownSyncgroup; a peer's refusal gives
// ErrNotMember, ErrJoinRefused, ErrBadRequest, ErrBusy or ErrRemote; a peer
// that breaks the protocol gives ErrProtocol. Errors name the peer.
type SgClient struct {
	h   host.Host
	cfg config
}

// NewSgClient returns an SgClient calling from h.
func NewSgClient(h host.Host, opts ...Option) (*SgClient, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return &SgClient{h: h, cfg: cfg}, nil
}

// Join asks p to admit this peer into syncgroup id with role, listening on
// addrs (the first MaxMemberAddrs are sent), and returns the syncgroup's spec.
func (c *SgClient) Join(ctx context.Context, p peer.ID, id string, role datastore.Role, addrs []ma.Multiaddr) (datastore.Spec, error) {
	req := &pb.SgRequest{Op: &pb.SgRequest_Join{Join: &pb.JoinRequest{Role: uint32(role), Addrs: addrsToWire(addrs)}}}
	var spec datastore.Spec
	err := c.call(ctx, p, id, req, func(resp *pb.SgResponse, now time.Time) (err error) {
		spec, err = specFromWire(resp.GetSpec(), id, now)
		return err
	})
	return spec, err
}

// Members asks p for the members of syncgroup id.
func (c *SgClient) Members(ctx context.Context, p peer.ID, id string) ([]datastore.Member, error) {
	req := &pb.SgRequest{Op: &pb.SgRequest_Members{Members: &pb.MembersRequest{}}}
	var ms []datastore.Member
	err := c.call(ctx, p, id, req, func(resp *pb.SgResponse, now time.Time) (err error) {
		ms, err = membersFromWire(resp.GetMembers(), now)
		return err
	})
	return ms, err
}

// Pull asks p for the entries of syncgroup id's log that this peer lacks,
// given since (origin → highest Seq held): at most limit (MaxPullEntries if
// limit is not positive or above it), and whether more remain.
func (c *SgClient) Pull(ctx context.Context, p peer.ID, id string, since map[peer.ID]uint64, limit int) ([]datastore.LogEntry, bool, error) {
	lim := pullLimit(int64(limit))
	req := &pb.SgRequest{Op: &pb.SgRequest_Pull{Pull: &pb.PullRequest{Since: watermarksToWire(since), Limit: uint32(lim)}}}
	var (
		entries []datastore.LogEntry
		more    bool
	)
	err := c.call(ctx, p, id, req, func(resp *pb.SgResponse, now time.Time) (err error) {
		entries, more, err = pullFromWire(resp, lim, now)
		return err
	})
	return entries, more, err
}

// Announce pushes entries of syncgroup id's log to p and returns how many
// were new to it.
func (c *SgClient) Announce(ctx context.Context, p peer.ID, id string, entries []datastore.LogEntry) (int, error) {
	req := &pb.SgRequest{Op: &pb.SgRequest_Announce{Announce: &pb.AnnounceRequest{Entries: entriesToWire(entries)}}}
	var accepted int
	err := c.call(ctx, p, id, req, func(resp *pb.SgResponse, _ time.Time) (err error) {
		accepted, err = acceptedFromWire(resp, len(entries))
		return err
	})
	return accepted, err
}

// pullFromWire validates a Pull response to a request for at most limit entries.
func pullFromWire(resp *pb.SgResponse, limit int, now time.Time) ([]datastore.LogEntry, bool, error) {
	if n := len(resp.GetEntries()); n > limit {
		return nil, false, fmt.Errorf("%d entries for a pull of at most %d", n, limit)
	}
	entries, err := entriesFromWire(resp.GetEntries(), now)
	if err != nil {
		return nil, false, err
	}
	return entries, resp.GetMore(), nil
}

// acceptedFromWire validates an Announce response to sent entries.
func acceptedFromWire(resp *pb.SgResponse, sent int) (int, error) {
	if n := resp.GetAccepted(); uint64(n) > uint64(sent) {
		return 0, fmt.Errorf("%d entries accepted of %d sent", n, sent)
	}
	return int(resp.GetAccepted()), nil
}

// call checks id and req, opens a stream for syncgroup id to p, sends req and
// reads the response, all within the request timeout, and hands an OK
// response to decode, whose errors are the peer's protocol violations.
func (c *SgClient) call(ctx context.Context, p peer.ID, id string, req *pb.SgRequest, decode func(*pb.SgResponse, time.Time) error) error {
	if err := datastore.CheckSyncgroupID(id); err != nil {
		return err
	}
	if _, err := requestFromWire(req, time.Now()); err != nil {
		return fmt.Errorf("syncgroup %s: not sent: %w", id, err)
	}
	if n := proto.Size(req); n > MaxSgFrameSize {
		return fmt.Errorf("syncgroup %s: not sent: %w: a %d-byte request exceeds the %d-byte frame cap", id, ErrBadRequest, n, MaxSgFrameSize)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.requestTimeout)
	defer cancel()
	st, err := c.h.NewStream(ctx, p, protocol.ID(id))
	if err != nil {
		return streamError(p, id, err)
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	resp, release, err := sgExchange(st, req, time.Now().Add(c.cfg.requestTimeout))
	if !stop() { // ctx ended first and reset the stream
		err = context.Cause(ctx)
	}
	if err != nil {
		st.Reset()
		return streamError(p, id, err)
	}
	defer release()
	st.Close()
	if resp.GetStatus() != pb.Status_OK {
		return sgStatusError(p, id, resp)
	}
	if err := decode(resp, time.Now()); err != nil {
		return fmt.Errorf("peer %s: syncgroup %s: %w: %v", p, id, ErrProtocol, err)
	}
	return nil
}

func sgExchange(st network.Stream, req *pb.SgRequest, deadline time.Time) (*pb.SgResponse, func(), error) {
	if err := st.Scope().SetService(SgServiceName); err != nil {
		return nil, nil, err
	}
	if err := st.SetDeadline(deadline); err != nil {
		return nil, nil, err
	}
	if err := writeMsg(st, req); err != nil {
		return nil, nil, fmt.Errorf("sending request: %w", err)
	}
	if err := st.CloseWrite(); err != nil {
		return nil, nil, err
	}
	var resp pb.SgResponse
	release, err := readMsgReserving(st, st.Scope(), network.ReservationPriorityHigh, &resp, MaxSgFrameSize)
	if err != nil {
		return nil, nil, err
	}
	return &resp, release, nil
}

// streamError names the peer in err. A peer that does not speak syncgroup
// id's protocol does not serve the syncgroup: it answers the negotiation "na"
// (when the stream was negotiated before use) or, when the negotiation was
// lazy, may reset the stream with StreamProtocolNegotiationFailed before
// its "na" is read.
func streamError(p peer.ID, id string, err error) error {
	var ns msmux.ErrNotSupported[protocol.ID]
	var se *network.StreamError
	if errors.As(err, &ns) || strings.Contains(err.Error(), "protocols not supported") ||
		errors.As(err, &se) && se.Remote && se.ErrorCode == network.StreamProtocolNegotiationFailed {
		return fmt.Errorf("peer %s: %w: %s", p, ErrUnknownSyncgroup, id)
	}
	if refusedBusy(err) {
		return fmt.Errorf("peer %s: syncgroup %s: %w: %v", p, id, ErrBusy, err)
	}
	return fmt.Errorf("peer %s: syncgroup %s: %w", p, id, err)
}

// sgStatusError maps a non-OK syncgroup response status to an error naming
// the peer.
func sgStatusError(p peer.ID, id string, resp *pb.SgResponse) error {
	var kind error
	switch st := resp.GetStatus(); st {
	case pb.Status_BUSY:
		kind = ErrBusy
	case pb.Status_INTERNAL:
		kind = ErrRemote
	default:
		for _, m := range sgStatuses {
			if m.status == st {
				kind = m.err
				break
			}
		}
		if kind == nil {
			return fmt.Errorf("peer %s: syncgroup %s: %w: unknown status %d", p, id, ErrProtocol, st)
		}
	}
	if msg := sanitize(resp.GetMessage()); msg != "" {
		return fmt.Errorf("peer %s: syncgroup %s: %w: %s", p, id, kind, msg)
	}
	return fmt.Errorf("peer %s: syncgroup %s: %w", p, id, kind)
}
