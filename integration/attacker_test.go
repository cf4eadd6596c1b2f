package integration

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/blobsync/blobsync/p2p"
	"github.com/blobsync/blobsync/protocol"
	"github.com/blobsync/blobsync/protocol/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"
)

// attacker is an in-test libp2p host that speaks raw bytes to a daemon: it
// frames what it likes, on any protocol ID, and reads back every byte the
// daemon sends and how the stream ended.
type attacker struct {
	h      host.Host
	target libp2ppeer.ID // the daemon under attack
}

// newAttacker starts a host with a fresh Ed25519 identity on 127.0.0.1 and,
// if d is not nil, connects it to d. Its own blob-protocol limits are raised
// far above the daemon's so that what is refused is refused by the daemon.
func newAttacker(t *testing.T, d *daemon) *attacker {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := p2p.New(key,
		p2p.ListenAddrs(ma.StringCast("/ip4/127.0.0.1/tcp/0")),
		p2p.WithProtocolLimit(protocol.ID, p2p.ProtocolLimit{
			InboundStreamsPerPeer: 4096, InboundStreams: 4096, MemoryPerPeer: 1 << 30, Memory: 1 << 30,
		}),
		p2p.UserAgent("blobsync-attacker"),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	a := &attacker{h: h}
	if d != nil {
		a.connect(t, d)
	}
	return a
}

// connect adds d's addresses (from peer id --json) to the peerstore and dials it.
func (a *attacker) connect(t *testing.T, d *daemon) {
	t.Helper()
	var info libp2ppeer.AddrInfo
	for _, s := range d.addrs {
		ai, err := libp2ppeer.AddrInfoFromString(s)
		if err != nil {
			t.Fatalf("daemon address %q: %v", s, err)
		}
		info.ID = ai.ID
		info.Addrs = append(info.Addrs, ai.Addrs...)
	}
	if info.ID.String() != d.id {
		t.Fatalf("daemon addresses name %s, its ID is %s", info.ID, d.id)
	}
	a.h.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := a.h.Connect(ctx, info); err != nil {
		t.Fatalf("attacker connecting to the daemon: %v", err)
	}
	a.target = info.ID
}

// addr is the attacker's TCP address with /p2p/<id>, for peer get --from.
func (a *attacker) addr(t *testing.T) string {
	t.Helper()
	for _, m := range a.h.Addrs() {
		if _, err := m.ValueForProtocol(ma.P_TCP); err == nil {
			return m.String() + "/p2p/" + a.h.ID().String()
		}
	}
	t.Fatalf("attacker listens on no TCP address: %v", a.h.Addrs())
	return ""
}

// rawReply is everything a daemon sent on one stream, and how the stream ended.
type rawReply struct {
	openErr error  // the stream could not be opened or its protocol negotiated
	data    []byte // bytes received (after the protocol negotiation)
	err     error  // how the stream ended: nil for a clean close after data
}

// reset reports whether the daemon reset the stream (refusing it, or on error).
func (r rawReply) reset() bool { return r.openErr == nil && errors.Is(r.err, network.ErrReset) }

// limited reports whether the daemon refused the stream for its resource limits.
func (r rawReply) limited() bool { return refusedForLimits(r.openErr) || refusedForLimits(r.err) }

func refusedForLimits(err error) bool {
	var se *network.StreamError
	return errors.As(err, &se) && se.Remote && se.ErrorCode == network.StreamResourceLimitExceeded
}

func (r rawReply) String() string {
	switch {
	case r.openErr != nil:
		return fmt.Sprintf("not opened (%v)", r.openErr)
	case r.err != nil:
		return fmt.Sprintf("%d bytes %x, then %v", len(r.data), r.data[:min(len(r.data), 64)], r.err)
	}
	return fmt.Sprintf("%d bytes %x, then a clean close", len(r.data), r.data[:min(len(r.data), 64)])
}

// send opens a stream on pid, writes raw, closes its write side if closeWrite
// and reads everything the daemon answers, for at most wait.
func (a *attacker) send(ctx context.Context, pid libp2pproto.ID, raw []byte, closeWrite bool, wait time.Duration) rawReply {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	st, err := a.h.NewStream(ctx, a.target, pid)
	if err != nil {
		return rawReply{openErr: err}
	}
	defer st.Reset() // after a clean close a no-op; else frees our side
	st.SetDeadline(time.Now().Add(wait))
	if len(raw) > 0 {
		if _, err := st.Write(raw); err != nil {
			data, rerr := io.ReadAll(st)
			if rerr == nil {
				rerr = err
			}
			return rawReply{data: data, err: rerr}
		}
	}
	if closeWrite {
		st.CloseWrite()
	}
	data, err := io.ReadAll(st)
	return rawReply{data: data, err: err}
}

// call is send with its write side closed, failing the test if the stream
// cannot be opened.
func (a *attacker) call(t *testing.T, pid libp2pproto.ID, raw []byte) rawReply {
	t.Helper()
	r := a.send(t.Context(), pid, raw, true, 10*time.Second)
	if r.openErr != nil {
		t.Fatalf("opening a %s stream: %v", pid, r.openErr)
	}
	return r
}

// rawFrame is m as one frame: uvarint length, then the message.
func rawFrame(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	return append(binary.AppendUvarint(nil, uint64(len(b))), b...)
}

// rawFrames is ms as consecutive frames.
func rawFrames(ms ...proto.Message) []byte {
	var out []byte
	for _, m := range ms {
		out = append(out, rawFrame(m)...)
	}
	return out
}

// splitRawFrame splits data into its first frame's body and what follows.
func splitRawFrame(data []byte) (body, rest []byte, err error) {
	n, k := binary.Uvarint(data)
	if k <= 0 {
		return nil, nil, fmt.Errorf("no frame length in %x", data[:min(len(data), 16)])
	}
	if uint64(len(data)-k) < n {
		return nil, nil, fmt.Errorf("frame of %d bytes truncated at %d", n, len(data)-k)
	}
	return data[k : k+int(n)], data[k+int(n):], nil
}

// oneResponse checks that r is exactly one Response frame followed by a clean
// close, and returns it.
func oneResponse(t *testing.T, what string, r rawReply) *pb.Response {
	t.Helper()
	resp, rest := responseHeader(t, what, r)
	if len(rest) != 0 {
		t.Fatalf("%s: %d bytes after the response frame (%v)", what, len(rest), resp)
	}
	return resp
}

// responseHeader checks that r is a Response frame and a clean close, and returns the
// frame and the bytes after it.
func responseHeader(t *testing.T, what string, r rawReply) (*pb.Response, []byte) {
	t.Helper()
	if r.openErr != nil || r.err != nil {
		t.Fatalf("%s: %v", what, r)
	}
	body, rest, err := splitRawFrame(r.data)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	var resp pb.Response
	if err := proto.Unmarshal(body, &resp); err != nil {
		t.Fatalf("%s: answer is not a Response: %v", what, err)
	}
	return &resp, rest
}
