package p2p

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func mustPeerID(t *testing.T, key crypto.PrivKey) peer.ID {
	t.Helper()
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatalf("IDFromPrivateKey: %v", err)
	}
	return id
}

func TestLoadOrCreateIdentityCreatesPrivateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.key")

	key, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatalf("first call: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat key file: %v", err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Fatalf("key file mode = %04o, want 0600", got)
	}
	if key.Type() != crypto.Ed25519 {
		t.Errorf("key type = %v, want Ed25519", key.Type())
	}

	// The file on disk holds exactly the returned key.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	onDisk, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		t.Fatalf("key file does not hold a private key: %v", err)
	}
	want := mustPeerID(t, key)
	if got := mustPeerID(t, onDisk); got != want {
		t.Fatalf("key on disk has peer ID %s, returned key has %s", got, want)
	}

	// A second call loads the same key and leaves the file alone.
	again, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatalf("second call: %v", err)
	}
	if got := mustPeerID(t, again); got != want {
		t.Fatalf("second call peer ID = %s, want %s", got, want)
	}
	if !key.Equals(again) {
		t.Fatal("second call returned a different key")
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, b) {
		t.Fatal("second call rewrote the key file")
	}
}

func TestLoadOrCreateIdentityRefusesReadableByOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.key")
	if _, err := LoadOrCreateIdentity(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	key, err := LoadOrCreateIdentity(path)
	if err == nil {
		t.Fatalf("mode 0644 key file accepted (key %v)", key)
	}
	if key != nil {
		t.Errorf("got a key alongside error %v", err)
	}
	if !strings.Contains(err.Error(), "chmod") {
		t.Errorf("error %q does not mention chmod", err)
	}

	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, before) {
		t.Error("refused key file was modified")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o644 {
		t.Errorf("mode changed to %04o, want 0644 left as is", got)
	}
}

func TestLoadOrCreateIdentityCorruptFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.key")
	garbage := make([]byte, 64)
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	rng.Read(garbage)
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}

	key, err := LoadOrCreateIdentity(path)
	if err == nil {
		t.Fatalf("corrupt key file accepted (key %v)", key)
	}
	if key != nil {
		t.Errorf("got a key alongside error %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "not a libp2p private key") {
		t.Errorf("error %q does not name the file and the problem", msg)
	}

	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, garbage) {
		t.Error("corrupt key file was overwritten")
	}
}

func TestLoadOrCreateIdentityConcurrent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "identity.key")

	const n = 16
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		ids   [n]peer.ID
		errs  [n]error
	)
	for i := range n {
		wg.Go(func() {
			<-start
			key, err := LoadOrCreateIdentity(path)
			if err != nil {
				errs[i] = err
				return
			}
			ids[i], errs[i] = peer.IDFromPrivateKey(key)
		})
	}
	close(start)
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	for i, id := range ids {
		if id != ids[0] {
			t.Errorf("caller %d got peer ID %s, caller 0 got %s", i, id, ids[0])
		}
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 1 || names[0] != "identity.key" {
		t.Fatalf("directory holds %q, want only identity.key", names)
	}
	key, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustPeerID(t, key); got != ids[0] {
		t.Fatalf("file on disk has peer ID %s, callers got %s", got, ids[0])
	}
}
