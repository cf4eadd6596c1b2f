//go:build !linux

package datastore

import (
	"errors"
	"os"
)

// startWriteback is a no-op where sync_file_range does not exist.
func startWriteback(*os.File, int64, int64) {}

// errDirectUnsupported is never returned where direct I/O is not used.
var errDirectUnsupported = errors.New("direct I/O unsupported")

// openDirect returns nil: direct I/O is used on Linux only.
func openDirect(string) *os.File { return nil }

// renameNoReplace is unsupported here: installs check and rename under a lock.
func renameNoReplace(string, string) error { return errNoReplaceUnsupported }
