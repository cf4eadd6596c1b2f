package protocol

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Errors a caller may see; test them with errors.Is.
var (
	// ErrNotFound: the peer does not hold the blob, or will not serve it to us
	// (the two are indistinguishable by design).
	ErrNotFound = errors.New("blob not found on peer")
	// ErrOffsetOutOfRange: GetBlob asked for an offset at or past the end.
	ErrOffsetOutOfRange = errors.New("offset out of range")
	// ErrBadRequest: the peer refused our request as malformed.
	ErrBadRequest = errors.New("request refused as malformed")
	// ErrBusy: the peer is out of resources; try later or elsewhere.
	ErrBusy = errors.New("peer busy")
	// ErrRemote: the peer failed internally.
	ErrRemote = errors.New("peer failed")
	// ErrProtocol: the peer broke the protocol (bad frame, short stream, lies).
	ErrProtocol = errors.New("protocol violation")
	// ErrTooSlow: a transfer stalled or fell below the minimum rate.
	ErrTooSlow = errors.New("transfer too slow")
	// ErrTooLarge: the blob exceeds this peer's maximum blob size.
	ErrTooLarge = errors.New("blob too large")
	// ErrLocal: this peer failed to store what it received (a full disk, an
	// I/O error): the responder is not at fault.
	ErrLocal = errors.New("local storage failed")
)

// localError marks err, from this peer's own store, as ErrLocal.
func localError(err error) error {
	return fmt.Errorf("%w: %w", ErrLocal, err)
}

// statusError maps a non-OK response status to an error naming the peer.
func statusError(p peer.ID, resp *pb.Response) error {
	var kind error
	switch resp.GetStatus() {
	case pb.Status_NOT_FOUND:
		kind = ErrNotFound
	case pb.Status_OFFSET_OUT_OF_RANGE:
		return &OffsetError{Peer: p, Size: int64(resp.GetSize())}
	case pb.Status_BAD_REQUEST:
		kind = ErrBadRequest
	case pb.Status_BUSY:
		kind = ErrBusy
	case pb.Status_INTERNAL:
		kind = ErrRemote
	default:
		return fmt.Errorf("peer %s: %w: unknown status %d", p, ErrProtocol, resp.GetStatus())
	}
	if msg := sanitize(resp.GetMessage()); msg != "" {
		return fmt.Errorf("peer %s: %w: %s", p, kind, msg)
	}
	return fmt.Errorf("peer %s: %w", p, kind)
}

// OffsetError reports a GetBlob offset at or past the end of a Size-byte blob.
type OffsetError struct {
	Peer peer.ID
	Size int64
}

func (e *OffsetError) Error() string {
	return fmt.Sprintf("peer %s: %v: the blob has %d bytes", e.Peer, ErrOffsetOutOfRange, e.Size)
}

func (e *OffsetError) Unwrap() error { return ErrOffsetOutOfRange }

// BadDataError reports a peer whose bytes did not hash to the BlobRef asked
// for. Nothing it sent was kept.
type BadDataError struct {
	Peer          peer.ID
	Ref           datastore.Ref
	ResumedAt     int64 // bytes already held before this peer's; 0 if none
	ReceivedBytes int64
}

func (e *BadDataError) Error() string {
	if e.ResumedAt > 0 {
		return fmt.Sprintf("peer %s sent bad data for %s (resumed at byte %d): %v", e.Peer, e.Ref, e.ResumedAt, datastore.ErrHashMismatch)
	}
	return fmt.Sprintf("peer %s sent bad data for %s: %v", e.Peer, e.Ref, datastore.ErrHashMismatch)
}

func (e *BadDataError) Unwrap() error { return datastore.ErrHashMismatch }

// sanitize makes a peer-supplied message safe for a log line or terminal.
func sanitize(s string) string {
	const max = 200
	if len(s) > max {
		s = s[:max] + "…"
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}

// errorMessage is the detail a responder sends with an error status, capped.
func errorMessage(err error) string {
	const max = 200
	s := err.Error()
	if len(s) > max {
		s = s[:max]
	}
	return s
}

// refusedBusy reports whether err is the peer resetting a stream because its
// resource limits (or rate limits) were reached: a busy peer, not a
// misbehaving one.
func refusedBusy(err error) bool {
	var se *network.StreamError
	return errors.As(err, &se) && se.Remote &&
		(se.ErrorCode == network.StreamResourceLimitExceeded || se.ErrorCode == network.StreamRateLimited)
}
