package protocol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// An AcceptedBlobOwnership may follow GetBlob on the stream the blob came on,
// once the fetcher has verified and installed it: one stream per fetched blob
// instead of two, and once it is answered the stream carries the fetcher's
// next GetBlob to that peer (reuse.go), which matters for small blobs. The
// responder waits for it up to the request timeout; a fetcher that sends
// none closes its side. The acknowledgement on a stream of its own stays
// valid (after a crash, say): the responder remembers the transfer for ten
// minutes either way.

// acknowledge sends taken to p on st, the GetBlob stream, or, if that stream
// failed before p answered (p closed it, or it timed out), on a new stream.
func (c *Client) acknowledge(ctx context.Context, st network.Stream, p peer.ID, ref datastore.Ref, taken map[string]int32) Ack {
	if _, err := sharesFromWire(taken); err != nil {
		if st != nil {
			st.Reset()
		}
		return Ack{Err: fmt.Errorf("%w: %v", ErrBadRequest, err)}
	}
	if st != nil {
		resp, err := c.ackOn(ctx, st, ref, taken)
		if err == nil {
			granted, keeping, err := acceptAnswer(p, resp, taken)
			return Ack{Granted: granted, Keeping: keeping, Err: err}
		}
		if ctx.Err() != nil {
			return Ack{Err: err}
		}
	}
	granted, keeping, err := c.AcceptBlobOwnership(ctx, p, ref, taken)
	return Ack{Granted: granted, Keeping: keeping, Err: err}
}

// ackOn sends the acknowledgement on st and reads the answer, then keeps st
// for the next GetBlob to its peer (reuse.go).
func (c *Client) ackOn(ctx context.Context, st network.Stream, ref datastore.Ref, taken map[string]int32) (*pb.Response, error) {
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	resp, err := exchange(st, acceptRequest(ref, taken), time.Now().Add(c.cfg.requestTimeout), false)
	if !stop() {
		err = context.Cause(ctx)
	}
	if err != nil {
		st.Reset()
		return nil, err
	}
	c.keep(st.Conn().RemotePeer(), st)
	return resp, nil
}

// ackOnStream serves the AcceptedBlobOwnership that may follow a GetBlob
// whose bytes were all sent on st. A closed stream is no error. answered
// reports that one was answered: the caller may then send more on st.
func (s *Server) ackOnStream(st network.Stream, caller peer.ID, ref datastore.Ref) (answered bool, err error) {
	if err := st.SetDeadline(time.Now().Add(s.cfg.requestTimeout)); err != nil {
		return false, err
	}
	var req pb.Request
	if err := readMsg(st, &req, MaxRequestSize); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return false, nil // no acknowledgement here
		case errors.Is(err, ErrProtocol):
			// Answered, not reset: a reset could cost the caller the blob's
			// last bytes, still unread.
			return false, writeMsg(st, &pb.Response{Status: pb.Status_BAD_REQUEST, Message: errorMessage(err)})
		}
		return false, err
	}
	if req.GetOp() != pb.Op_ACCEPTED_BLOB_OWNERSHIP || !bytes.Equal(req.GetRef(), ref.Bytes()) {
		return false, writeMsg(st, &pb.Response{Status: pb.Status_BAD_REQUEST, Message: "only an AcceptedBlobOwnership of the blob sent may follow GetBlob"})
	}
	if err := writeMsg(st, s.accepted(caller, ref, req.GetSharesTaken())); err != nil {
		return false, err
	}
	return true, nil
}
