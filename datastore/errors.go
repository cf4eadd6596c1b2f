package datastore

import "errors"

// Errors returned by this package; callers test them with errors.Is.
var (
	// ErrBadRef: a string or byte slice is not a BlobRef (CIDv1, raw, BLAKE3-256).
	ErrBadRef = errors.New("malformed BlobRef")
	// ErrNotFound: the blob or record is not held here.
	ErrNotFound = errors.New("not found")
	// ErrHashMismatch: received bytes do not hash to the BlobRef; nothing was kept.
	ErrHashMismatch = errors.New("content does not match its BlobRef")
	// ErrBusy: another writer holds this blob's partial file.
	ErrBusy = errors.New("blob is being written by another fetch")
	// ErrTooLarge: a blob or partial file exceeds the size it must have.
	ErrTooLarge = errors.New("blob exceeds its expected size")
	// ErrClosed: the blob store or partial file was already closed.
	ErrClosed = errors.New("closed")
)

// errNoReplaceUnsupported: the file system has no rename that refuses to
// replace its target.
var errNoReplaceUnsupported = errors.New("rename without replace unsupported")
