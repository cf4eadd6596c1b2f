package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/blobsync/blobsync/fetcher"
	"github.com/blobsync/blobsync/p2p"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/syndtr/goleveldb/leveldb/filter"
)

// layout names the files of a data directory (DESIGN §4).
type layout string

func (l layout) identity() string  { return filepath.Join(string(l), "identity.key") }
func (l layout) config() string    { return filepath.Join(string(l), "config.json") }
func (l layout) socket() string    { return filepath.Join(string(l), "api.sock") }
func (l layout) datastore() string { return filepath.Join(string(l), "datastore") }
func (l layout) blobs() string     { return filepath.Join(string(l), "blobs") }

// openDatastore opens (creating if needed) the leveldb datastore at path. Its
// tables carry bloom filters, 10 bits a key: a fetched blob costs about a
// dozen reads between the two peers (signposts, blob metadata), several of
// them for keys most tables lack, and a filter rules a table out from memory
// instead of seeking into its blocks. With 4 KiB blobs, where the fetch is
// CPU-bound, reads took 11% of the CPU (before the MetaStore's record cache
// answered most of them); peer bench --only small measured
// 1,945–2,127 blobs/s with filters against 1,819–2,081 without (3 pairs).
func openDatastore(path string) (*leveldb.Datastore, error) {
	return leveldb.NewDatastore(path, &leveldb.Options{Filter: filter.NewBloomFilter(10)})
}

// fileConfig is config.json.
type fileConfig struct {
	// Listen lists the multiaddrs the daemon listens on unless --listen is given.
	Listen []string `json:"listen"`
	// Bootstrap lists DHT bootstrap peers (multiaddrs ending in /p2p/<id>),
	// used with those given by --bootstrap.
	Bootstrap []string `json:"bootstrap"`
	// DHTServer makes this peer answer DHT queries for others even if it
	// serves no syncgroup (a bootstrap node, say).
	DHTServer bool         `json:"dht_server"`
	Limits    limitsConfig `json:"limits"`
}

type limitsConfig struct {
	// MaxBlobSize is the largest blob this peer fetches, in bytes.
	MaxBlobSize int64 `json:"max_blob_size"`
	// InboundStreamsPerPeer bounds the blob streams one peer may have open to us.
	InboundStreamsPerPeer int `json:"inbound_streams_per_peer"`
	// MaxUploadRate caps the bytes per second this peer sends to all others;
	// 0 is unlimited.
	MaxUploadRate int64 `json:"max_upload_rate"`
	// FetchConcurrency is how many blobs the server fetcher fetches at once.
	FetchConcurrency int `json:"fetch_concurrency"`
	// MaxStorage is the storage budget in bytes: above it, copies this peer
	// does not own are dropped, least recently used first. 0: no budget.
	MaxStorage int64 `json:"max_storage"`
}

func defaultConfig() fileConfig {
	return fileConfig{
		Listen:    []string{"/ip4/0.0.0.0/tcp/4747", "/ip4/0.0.0.0/udp/4747/quic-v1"},
		Bootstrap: []string{},
		Limits:    limitsConfig{MaxBlobSize: 64 << 30, InboundStreamsPerPeer: 32, FetchConcurrency: fetcher.DefaultConcurrency},
	}
}

func (c fileConfig) validate() error {
	if len(c.Listen) == 0 {
		return errors.New("config: no listen addresses")
	}
	if _, err := parseAddrs(c.Listen); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	for _, b := range c.Bootstrap {
		if _, err := parsePeerAddr(b); err != nil {
			return fmt.Errorf("config: bootstrap: %w", err)
		}
	}
	if c.Limits.MaxBlobSize <= 0 {
		return fmt.Errorf("config: limits.max_blob_size %d must be positive", c.Limits.MaxBlobSize)
	}
	if c.Limits.InboundStreamsPerPeer <= 0 {
		return fmt.Errorf("config: limits.inbound_streams_per_peer %d must be positive", c.Limits.InboundStreamsPerPeer)
	}
	if c.Limits.MaxUploadRate < 0 {
		return fmt.Errorf("config: limits.max_upload_rate %d must not be negative", c.Limits.MaxUploadRate)
	}
	if c.Limits.MaxStorage < 0 {
		return fmt.Errorf("config: limits.max_storage %d must not be negative", c.Limits.MaxStorage)
	}
	if c.Limits.FetchConcurrency <= 0 {
		return fmt.Errorf("config: limits.fetch_concurrency %d must be positive", c.Limits.FetchConcurrency)
	}
	return nil
}

func parseAddrs(ss []string) ([]ma.Multiaddr, error) {
	out := make([]ma.Multiaddr, 0, len(ss))
	for _, s := range ss {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("bad multiaddr %q: %v", s, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// parsePeerAddr parses a multiaddr ending in /p2p/<peer ID>.
func parsePeerAddr(s string) (peer.AddrInfo, error) {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("bad multiaddr %q: %v", s, err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("multiaddr %q must end in /p2p/<peer ID>", s)
	}
	return *ai, nil
}

// loadConfig reads config.json, refusing unknown fields and bad values.
func loadConfig(l layout) (fileConfig, error) {
	b, err := os.ReadFile(l.config())
	if errors.Is(err, fs.ErrNotExist) {
		return fileConfig{}, fmt.Errorf("%s is not initialized: run peer init --data %s", l, l)
	}
	if err != nil {
		return fileConfig{}, err
	}
	c := defaultConfig()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return fileConfig{}, fmt.Errorf("%s: %v", l.config(), err)
	}
	if err := c.validate(); err != nil {
		return fileConfig{}, fmt.Errorf("%s: %w", l.config(), err)
	}
	return c, nil
}

// initDataDir creates what is missing of a data directory and returns the peer
// ID. It never changes what exists.
func initDataDir(l layout) (peer.ID, error) {
	if err := os.MkdirAll(string(l), 0o700); err != nil {
		return "", err
	}
	key, err := p2p.LoadOrCreateIdentity(l.identity())
	if err != nil {
		return "", err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(l.config()); errors.Is(err, fs.ErrNotExist) {
		b, _ := json.MarshalIndent(defaultConfig(), "", "  ")
		if err := writeFileAtomic(l.config(), append(b, '\n'), 0o600); err != nil {
			return "", err
		}
	}
	if _, err := os.Stat(l.datastore()); errors.Is(err, fs.ErrNotExist) {
		d, err := openDatastore(l.datastore())
		if err != nil {
			return "", fmt.Errorf("datastore: %w", err)
		}
		if err := d.Close(); err != nil {
			return "", fmt.Errorf("datastore: %w", err)
		}
	}
	// Only the directories: opening the blob store would clean up abandoned
	// puts, and a running daemon's put in progress looks just like one.
	if err := os.MkdirAll(filepath.Join(l.blobs(), "partial"), 0o700); err != nil {
		return "", err
	}
	return id, nil
}

// writeFileAtomic writes data to a temp file, fsyncs and renames it to path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func cmdInit(_ context.Context, args []string, e env) error {
	c := newCommand("init", e)
	if _, err := c.parse(args, 0, 0); err != nil {
		return err
	}
	id, err := initDataDir(layout(c.dataDir))
	if err != nil {
		return fmt.Errorf("init %s: %w", c.dataDir, err)
	}
	if c.json {
		return writeJSON(e.stdout, map[string]string{"id": id.String(), "data": c.dataDir})
	}
	fmt.Fprintln(e.stdout, id)
	return nil
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
