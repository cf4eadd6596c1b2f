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
// instead of two, which matters for small blobs. The responder waits for it
// up to the request timeout; a fetcher that sends none closes its side. The
// acknowledgement on a stream of its own stays valid (after a crash, say):
// the responder remembers the transfer for ten minutes either way.

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

// ackOn sends the acknowledgement on st and reads the answer, then closes st.
func (c *Client) ackOn(ctx context.Context, st network.Stream, ref datastore.Ref, taken map[string]int32) (*pb.Response, error) {
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	resp, err := exchange(st, acceptRequest(ref, taken), time.Now().Add(c.cfg.requestTimeout), true)
	if !stop() {
		err = context.Cause(ctx)
	}
	if err != nil {
		st.Reset()
		return nil, err
	}
	st.Close()
	return resp, nil
}

// ackOnStream serves the AcceptedBlobOwnership that may follow a GetBlob
// whose bytes were all sent on st. A closed stream is no error.
func (s *Server) ackOnStream(st network.Stream, caller peer.ID, ref datastore.Ref) error {
	if err := st.SetDeadline(time.Now().Add(s.cfg.requestTimeout)); err != nil {
		return err
	}
	var req pb.Request
	if err := readMsg(st, &req, MaxRequestSize); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return nil // no acknowledgement here
		case errors.Is(err, ErrProtocol):
			// Answered, not reset: a reset could cost the caller the blob's
			// last bytes, still unread.
			return writeMsg(st, &pb.Response{Status: pb.Status_BAD_REQUEST, Message: errorMessage(err)})
		}
		return err
	}
	if req.GetOp() != pb.Op_ACCEPTED_BLOB_OWNERSHIP || !bytes.Equal(req.GetRef(), ref.Bytes()) {
		return writeMsg(st, &pb.Response{Status: pb.Status_BAD_REQUEST, Message: "only an AcceptedBlobOwnership of the blob sent may follow GetBlob"})
	}
	return writeMsg(st, s.accepted(caller, ref, req.GetSharesTaken()))
}
