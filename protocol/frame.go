package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/protobuf/proto"
)

// Frame size caps: a frame longer than its cap is refused before anything is
// allocated for it.
const (
	MaxRequestSize  = 4 << 10
	MaxResponseSize = 64 << 10
)

// readMsg reads one varint-length-delimited protobuf from r into m. It reads
// the length a byte at a time, so nothing after the frame is consumed: the raw
// blob bytes that follow a GetBlob response stay in r.
func readMsg(r io.Reader, m proto.Message, maxSize int) error {
	n, err := readUvarint(r)
	if err != nil {
		return err
	}
	if n > uint64(maxSize) {
		return fmt.Errorf("%w: frame of %d bytes exceeds the %d-byte cap", ErrProtocol, n, maxSize)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return readError(fmt.Sprintf("reading a %d-byte frame", n), err)
	}
	if err := proto.Unmarshal(buf, m); err != nil {
		return fmt.Errorf("%w: malformed message: %v", ErrProtocol, err)
	}
	return nil
}

// readUvarint reads a minimally encoded unsigned varint of at most 10 bytes.
func readUvarint(r io.Reader) (uint64, error) {
	var b [1]byte
	var x uint64
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			if i > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, readError("reading frame length", err)
		}
		if i == binary.MaxVarintLen64-1 && b[0] > 1 {
			return 0, fmt.Errorf("%w: frame length overflows 64 bits", ErrProtocol)
		}
		if b[0] < 0x80 {
			if b[0] == 0 && i > 0 {
				return 0, fmt.Errorf("%w: frame length is not minimally encoded", ErrProtocol)
			}
			return x | uint64(b[0])<<(7*i), nil
		}
		x |= uint64(b[0]&0x7f) << (7 * i)
	}
	return 0, fmt.Errorf("%w: frame length overflows 64 bits", ErrProtocol)
}

// readError describes a failed read of a frame: a stream that ended early is
// the peer's fault (ErrProtocol); a reset or a deadline is the transport's,
// and is not labelled a protocol violation.
func readError(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: %w", ErrProtocol, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// writeMsg writes m to w as one varint-length-delimited frame, in one Write.
func writeMsg(w io.Writer, m proto.Message) error {
	buf, err := appendMsg(nil, m)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// appendMsg appends m to buf, varint-length-delimited.
func appendMsg(buf []byte, m proto.Message) ([]byte, error) {
	size := proto.Size(m)
	buf = binary.AppendUvarint(slices.Grow(buf, binary.MaxVarintLen64+size), uint64(size))
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, m)
	if err != nil {
		return nil, fmt.Errorf("marshalling %T: %w", m, err)
	}
	return buf, nil
}
