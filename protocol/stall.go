package protocol

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// stallGuard moves a stream's deadline forward as bytes flow, so a transfer may
// take as long as it needs while it progresses. It fails a transfer that moves
// no byte for stall, or fewer than minRate×stall bytes in a window of stall.
type stallGuard struct {
	st      network.Stream
	stall   time.Duration
	minRate int64

	refreshed   time.Time // when the deadline was last moved
	windowStart time.Time
	windowBytes int64
}

func newStallGuard(st network.Stream, c config) *stallGuard {
	return &stallGuard{st: st, stall: c.stallTimeout, minRate: c.minRate}
}

// arm sets the first deadline; call it before the first Read or Write.
func (g *stallGuard) arm(now time.Time) error {
	g.windowStart, g.refreshed = now, now
	return g.st.SetDeadline(now.Add(g.stall))
}

func (g *stallGuard) Read(p []byte) (int, error) {
	n, err := g.st.Read(p)
	return n, g.check(n, err)
}

func (g *stallGuard) Write(p []byte) (int, error) {
	n, err := g.st.Write(p)
	return n, g.check(n, err)
}

func (g *stallGuard) check(n int, err error) error {
	if isTimeout(err) {
		return fmt.Errorf("%w: no progress for %v", ErrTooSlow, g.stall)
	}
	if gerr := g.progress(n); err == nil {
		err = gerr
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func (g *stallGuard) progress(n int) error {
	now := time.Now()
	g.windowBytes += int64(n)
	if now.Sub(g.windowStart) >= g.stall {
		if want := int64(g.stall.Seconds() * float64(g.minRate)); g.windowBytes < want {
			return fmt.Errorf("%w: %d bytes in %v, below the minimum of %d", ErrTooSlow, g.windowBytes, now.Sub(g.windowStart).Round(time.Millisecond), want)
		}
		g.windowStart, g.windowBytes = now, 0
	}
	if n > 0 && now.Sub(g.refreshed) >= g.stall/8 {
		g.refreshed = now
		return g.st.SetDeadline(now.Add(g.stall))
	}
	return nil
}
