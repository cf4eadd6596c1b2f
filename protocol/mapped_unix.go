//go:build linux || darwin || freebsd

package protocol

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

var pageSize = int64(os.Getpagesize())

// mapFile maps n bytes of f from off, a multiple of the page size, for
// reading in order.
func mapFile(f *os.File, off int64, n int) ([]byte, error) {
	m, err := unix.Mmap(int(f.Fd()), off, n, unix.PROT_READ, unix.MAP_SHARED)
	if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EACCES) {
		return nil, errMapUnsupported // a file system without mmap, or a file opened otherwise
	}
	if err != nil {
		return nil, err
	}
	_ = unix.Madvise(m, unix.MADV_SEQUENTIAL) // advisory
	return m, nil
}

func unmap(m []byte) { _ = unix.Munmap(m) }
