package blobsync

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives its tests: every Node,
// transfer and host must shut down completely. goleveldb's mpoolDrain is
// exempt: after Close it waits up to 1 s for its pool by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"))
}
