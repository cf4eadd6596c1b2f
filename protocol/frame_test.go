package protocol

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/network"
)

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(b []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(b, r.data)
	r.data = r.data[n:]
	return n, nil
}

// A frame cut short by the peer is a protocol violation; a frame cut short by
// the transport (a reset, a deadline) is not, and keeps its cause.
func TestFrameReadErrorsNameTheirCause(t *testing.T) {
	var whole bytes.Buffer
	if err := writeMsg(&whole, &pb.Request{Op: pb.Op_HAVE_BLOB, Ref: bytes.Repeat([]byte{1}, 40)}); err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{0, 1, whole.Len() - 1} {
		for cause, protocolFault := range map[error]bool{io.EOF: true, network.ErrReset: false, os.ErrDeadlineExceeded: false} {
			err := readMsg(&failingReader{data: whole.Bytes()[:cut], err: cause}, &pb.Request{}, MaxRequestSize)
			if err == nil || errors.Is(err, ErrProtocol) != protocolFault {
				t.Errorf("cut at %d by %v: %v; want a protocol violation: %v", cut, cause, err, protocolFault)
			}
			if cause != io.EOF && !errors.Is(err, cause) {
				t.Errorf("cut at %d by %v: %v does not keep its cause", cut, cause, err)
			}
		}
	}
	if err := readMsg(&failingReader{err: io.EOF}, &pb.Request{}, MaxRequestSize); !errors.Is(err, io.EOF) {
		t.Errorf("a stream that ends before a frame: %v; want io.EOF kept (a closed stream, no frame)", err)
	}
}
