package blobsync

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
)

func TestFailureReason(t *testing.T) {
	for err, want := range map[error]string{
		nil:                                      "ok",
		context.Canceled:                         "canceled",
		&protocol.BadDataError{}:                 "bad_data",
		fmt.Errorf("x: %w", protocol.ErrTooSlow): "too_slow",
		protocol.ErrProtocol:                     "protocol",
		datastore.ErrBusy:                        "busy",
		fmt.Errorf("blob: %w: %w", ErrNoLocation, protocol.ErrNotFound):  "not_found",
		errors.New("disk on fire"):                                       "other",
		fmt.Errorf("peer x: reading frame length: %w", network.ErrReset): "network",
		fmt.Errorf("blob: %w: %w", ErrNoLocation, &swarm.DialError{}):    "network",
		fmt.Errorf("x: %w", os.ErrDeadlineExceeded):                      "network",
	} {
		if got := failureReason(err); got != want {
			t.Errorf("failureReason(%v) = %q, want %q", err, got, want)
		}
	}
}
