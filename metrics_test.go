package blobsync

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
)

func TestFailureReason(t *testing.T) {
	for err, want := range map[error]string{
		nil:                                      "ok",
		context.Canceled:                         "canceled",
		&protocol.BadDataError{}:                 "bad_data",
		fmt.Errorf("x: %w", protocol.ErrTooSlow): "too_slow",
		protocol.ErrProtocol:                     "protocol",
		datastore.ErrBusy:                        "busy",
		fmt.Errorf("blob: %w: %w", ErrNoLocation, protocol.ErrNotFound): "not_found",
		errors.New("disk on fire"):                                      "other",
	} {
		if got := failureReason(err); got != want {
			t.Errorf("failureReason(%v) = %q, want %q", err, got, want)
		}
	}
}
