package protocol

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives its tests: every
// Server, Client transfer and host must shut down completely.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
