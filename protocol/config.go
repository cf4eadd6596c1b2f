package protocol

import (
	"fmt"
	"log/slog"
	"time"
)

// Defaults applied before options.
const (
	DefaultRequestTimeout = 10 * time.Second // to open a stream and exchange request and response header
	DefaultStallTimeout   = 30 * time.Second // longest a transfer may go without a byte, and its rate window
	DefaultMinRate        = 16 << 10         // bytes/s a transfer must average over each stall window
	DefaultBufferSize     = 256 << 10        // copy buffer per transfer, reserved in the stream's scope
	DefaultMaxBlobSize    = int64(64) << 30  // the largest blob a client accepts
	minBufferSize         = 4 << 10
	maxBufferSize         = 16 << 20
)

type config struct {
	uploadRate     int64 // bytes/s a Server sends in all; 0: unlimited
	requestTimeout time.Duration
	stallTimeout   time.Duration
	minRate        int64
	bufferSize     int
	maxBlobSize    int64
	log            *slog.Logger
}

func defaultConfig() config {
	return config{
		requestTimeout: DefaultRequestTimeout,
		stallTimeout:   DefaultStallTimeout,
		minRate:        DefaultMinRate,
		bufferSize:     DefaultBufferSize,
		maxBlobSize:    DefaultMaxBlobSize,
		log:            slog.Default(),
	}
}

// Option configures a Server, Client, SgServer or SgClient.
type Option func(*config)

// RequestTimeout bounds opening a stream and exchanging request and response
// header (default DefaultRequestTimeout).
func RequestTimeout(d time.Duration) Option { return func(c *config) { c.requestTimeout = d } }

// StallTimeout cuts a transfer off when no byte moves for d, or when fewer than
// minRate×d bytes moved in a window of d (defaults DefaultStallTimeout, DefaultMinRate).
func StallTimeout(d time.Duration, minRate int64) Option {
	return func(c *config) { c.stallTimeout, c.minRate = d, minRate }
}

// BufferSize sets the copy buffer per transfer (default DefaultBufferSize).
func BufferSize(n int) Option { return func(c *config) { c.bufferSize = n } }

// MaxBlobSize sets the largest blob a Client accepts (default DefaultMaxBlobSize).
func MaxBlobSize(n int64) Option { return func(c *config) { c.maxBlobSize = n } }

// UploadRate caps what a Server sends, over all its transfers, at bytesPerSec
// (default 0: unlimited). A cap below the callers' minimum rate (StallTimeout)
// makes them give up on this peer.
func UploadRate(bytesPerSec int64) Option { return func(c *config) { c.uploadRate = bytesPerSec } }

// Logger sets the logger (default slog.Default()).
func Logger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

func newConfig(opts []Option) (config, error) {
	c := defaultConfig()
	for _, o := range opts {
		o(&c)
	}
	return c, c.Validate()
}

// Validate reports an option that cannot work.
func (c config) Validate() error {
	switch {
	case c.requestTimeout <= 0:
		return fmt.Errorf("protocol: request timeout %v must be positive", c.requestTimeout)
	case c.stallTimeout <= 0:
		return fmt.Errorf("protocol: stall timeout %v must be positive", c.stallTimeout)
	case c.minRate < 0:
		return fmt.Errorf("protocol: minimum rate %d must not be negative", c.minRate)
	case c.bufferSize < minBufferSize || c.bufferSize > maxBufferSize:
		return fmt.Errorf("protocol: buffer size %d must be in [%d, %d]", c.bufferSize, minBufferSize, maxBufferSize)
	case c.maxBlobSize <= 0:
		return fmt.Errorf("protocol: maximum blob size %d must be positive", c.maxBlobSize)
	case c.log == nil:
		return fmt.Errorf("protocol: nil logger")
	case c.uploadRate < 0:
		return fmt.Errorf("protocol: upload rate %d must not be negative", c.uploadRate)
	}
	return nil
}
