package protocol

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
)

// A blob larger than the transfer buffer is sent from a read-only mapping of
// its file where that is safe, not read into the buffer first: the muxer
// copies each piece into its frame straight from the page cache. On 2 cores,
// with both peers of `peer bench` there, a 1 GiB fetch ran at 0.877 of the
// bare stream against 0.856 reading (14 interleaved pairs), the read's copy
// being 0.11 CPU-s per GiB on the sender.
//
// Reading a mapping can fault where a read would have failed (an I/O error,
// a file truncated under it). A fault in the goroutine that reads becomes an
// error (debug.SetPanicOnFault), so the mapping is used only on streams whose
// Write copies the bytes before it returns, in the caller: yamux's. QUIC's
// streams hand the caller's slice to the connection's goroutine.
const mapWindow = 64 << 20 // bytes mapped at a time

var errMapUnsupported = errors.New("file mapping not supported")

// copiesInWrite reports whether st's Write reads the bytes only in the
// calling goroutine.
func copiesInWrite(st network.Stream) bool {
	return st.Conn().ConnState().StreamMultiplexer == yamux.ID
}

// sendMapped writes [off, end) of f to w from read-only mappings of the
// file, window bytes at a time (a multiple of the page size), in writes of at
// most piece bytes, calling before ahead of each (the rate limit) and sent
// after it. It returns errMapUnsupported, having sent nothing, where the
// file cannot be mapped; a fault reading the file is an error.
func sendMapped(w io.Writer, f *os.File, off, end int64, window int64, piece int, before func(int) error, sent func(int)) (n int64, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			fault, ok := r.(interface{ Addr() uintptr })
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("reading the file: fault at %#x", fault.Addr())
		}
	}()
	for off < end {
		base := off &^ (pageSize - 1)
		m, err := mapFile(f, base, int(min(end-base, window)))
		if err != nil {
			if n == 0 && errors.Is(err, errMapUnsupported) {
				return 0, err
			}
			return n, fmt.Errorf("mapping the file: %w", err)
		}
		err = func() error {
			defer unmap(m)
			for off < base+int64(len(m)) {
				b := m[off-base : min(off-base+int64(piece), int64(len(m)))]
				if err := before(len(b)); err != nil {
					return err
				}
				if _, err := w.Write(b); err != nil {
					return err
				}
				off += int64(len(b))
				n += int64(len(b))
				sent(len(b))
			}
			return nil
		}()
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
