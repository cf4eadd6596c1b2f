package datastore

import (
	"errors"
	"fmt"
	"strings"
)

// SyncgroupPrefix begins every syncgroup ID: a syncgroup ID is the libp2p
// protocol ID its members speak.
const SyncgroupPrefix = "/blobsync/sg/"

// MaxSyncgroupIDLen caps a syncgroup ID's length in bytes.
const MaxSyncgroupIDLen = 200

// ErrBadSyncgroupID: a string is not a syncgroup ID.
var ErrBadSyncgroupID = errors.New("malformed syncgroup ID")

// CheckSyncgroupID reports whether id is a well-formed syncgroup ID:
// SyncgroupPrefix then a name of letters, digits, '.', '_' and '-' that
// begins with a letter or digit. (The ID is a path component of datastore
// keys: no '/', and never "." or "..".)
func CheckSyncgroupID(id string) error {
	if !strings.HasPrefix(id, SyncgroupPrefix) {
		return fmt.Errorf("%w: %q does not begin with %s", ErrBadSyncgroupID, sanitizeID(id), SyncgroupPrefix)
	}
	name := id[len(SyncgroupPrefix):]
	switch {
	case name == "":
		return fmt.Errorf("%w: %q has no name after %s", ErrBadSyncgroupID, id, SyncgroupPrefix)
	case len(id) > MaxSyncgroupIDLen:
		return fmt.Errorf("%w: %d bytes is longer than %d", ErrBadSyncgroupID, len(id), MaxSyncgroupIDLen)
	case strings.IndexFunc(name, func(r rune) bool { return !validNameRune(r) }) >= 0:
		return fmt.Errorf("%w: %q: the name may hold only letters, digits, '.', '_' and '-'", ErrBadSyncgroupID, sanitizeID(id))
	case !alnum(rune(name[0])):
		// Not "." or "..": datastore keys clean those away, colliding with others.
		return fmt.Errorf("%w: %q: the name must begin with a letter or digit", ErrBadSyncgroupID, sanitizeID(id))
	}
	return nil
}

func validNameRune(r rune) bool { return alnum(r) || r == '.' || r == '_' || r == '-' }

func alnum(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' }

// sanitizeID shortens a rejected ID for an error message.
func sanitizeID(id string) string {
	if len(id) > 80 {
		return id[:80] + "…"
	}
	return id
}
