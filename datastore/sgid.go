package datastore

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// SyncgroupPrefix begins every syncgroup ID: a syncgroup ID is the libp2p
// protocol ID its members speak.
const SyncgroupPrefix = "/blobsync/sg/"

// MaxSyncgroupIDLen caps a syncgroup ID's length in bytes.
const MaxSyncgroupIDLen = 200

// ErrBadSyncgroupID: a string is not a syncgroup ID.
var ErrBadSyncgroupID = errors.New("malformed syncgroup ID")

// CheckSyncgroupID reports whether id is a well-formed syncgroup ID:
// SyncgroupPrefix then a non-empty name of printable, non-space characters.
func CheckSyncgroupID(id string) error {
	if !strings.HasPrefix(id, SyncgroupPrefix) {
		return fmt.Errorf("%w: %q does not begin with %s", ErrBadSyncgroupID, id, SyncgroupPrefix)
	}
	name := id[len(SyncgroupPrefix):]
	switch {
	case name == "":
		return fmt.Errorf("%w: %q has no name after %s", ErrBadSyncgroupID, id, SyncgroupPrefix)
	case len(id) > MaxSyncgroupIDLen:
		return fmt.Errorf("%w: %d bytes is longer than %d", ErrBadSyncgroupID, len(id), MaxSyncgroupIDLen)
	case strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0:
		return fmt.Errorf("%w: %q has spaces or unprintable characters", ErrBadSyncgroupID, id)
	}
	return nil
}
