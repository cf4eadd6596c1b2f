package protocol

import (
	"context"
	"sync"

	"github.com/libp2p/go-libp2p/core/network"
)

// handlerGroup runs a server's stream handlers: a stream is closed when its
// handler succeeds and reset when it fails or the server closes; close
// refuses new streams and waits for the handlers running.
type handlerGroup struct {
	ctx    context.Context // ends when the server closes
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func newHandlerGroup() *handlerGroup {
	g := &handlerGroup{}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g
}

// run handles st with handle, unless the group is closed; failed says why a
// stream was reset.
func (g *handlerGroup) run(st network.Stream, handle func(network.Stream) error, failed func(error)) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		st.Reset()
		return
	}
	g.wg.Add(1) // under mu: close cannot be waiting yet
	g.mu.Unlock()
	defer g.wg.Done()
	stop := context.AfterFunc(g.ctx, func() { st.Reset() })
	defer stop()
	if err := handle(st); err != nil {
		failed(err)
		st.Reset()
		return
	}
	st.Close()
}

// close refuses new streams, resets those being handled and waits for their
// handlers to return.
func (g *handlerGroup) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	g.wg.Wait()
}
