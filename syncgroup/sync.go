package syncgroup

import (
	"context"
	"slices"
	"sync"

	"github.com/blobsync/blobsync/datastore"
	"github.com/blobsync/blobsync/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
)

// maxPullPages bounds one PullFrom: 1000 pages of protocol.MaxPullEntries.
const maxPullPages = 1000

// pushParallel bounds the members one push reaches at once.
const pushParallel = 8

// pushAsync sends entries to every other member of rec in the background. A
// member that misses a push catches up by pulling.
func (m *Manager) pushAsync(id string, rec *datastore.Group, entries []datastore.LogEntry) {
	var targets []peer.ID
	for _, mb := range rec.Members {
		if mb.Peer != m.cfg.Self {
			targets = append(targets, mb.Peer)
		}
	}
	if len(targets) == 0 {
		return
	}
	m.background(func() {
		sem := make(chan struct{}, pushParallel)
		var wg sync.WaitGroup
		for _, p := range targets {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				for chunk := range slices.Chunk(entries, protocol.MaxAnnounceEntries) {
					ctx, cancel := context.WithTimeout(m.ctx, m.cfg.PushTimeout)
					_, err := m.tr.Announce(ctx, p, id, chunk)
					cancel()
					if err != nil {
						m.cfg.Log.Debug("syncgroup: push failed; the member will pull", "sg", id, "peer", p, "err", err)
						return
					}
				}
			})
		}
		wg.Wait()
	})
}

// PullFrom pulls syncgroup id's entries this peer lacks from member p, page by
// page, until p has nothing more.
func (m *Manager) PullFrom(ctx context.Context, p peer.ID, id string) error {
	g, err := m.group(id)
	if err != nil {
		return err
	}
	for range maxPullPages {
		since, err := m.Watermarks(id)
		if err != nil {
			return err
		}
		entries, more, err := m.tr.Pull(ctx, p, id, since, protocol.MaxPullEntries)
		if err != nil {
			return err
		}
		g.mu.Lock()
		applied, _, err := m.apply(ctx, id, g, p, entries)
		g.mu.Unlock()
		if err != nil {
			return err
		}
		if !more || len(applied) == 0 {
			return nil
		}
	}
	return nil
}

// pullAsync pulls syncgroup id from p in the background. If a pull from p is
// already under way, that one pulls once more when it ends.
func (m *Manager) pullAsync(p peer.ID, id string) {
	key := pullKey{id: id, p: p}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx.Err() != nil {
		return
	}
	if _, running := m.pulling[key]; running {
		// What is asked for now may postdate what the running pull gets
		// (an entry pushed ahead of one it depends on): it pulls again.
		m.pulling[key] = true
		return
	}
	m.pulling[key] = false
	m.wg.Go(func() { // started under mu: see Close
		for again := true; again; {
			if err := m.PullFrom(m.ctx, p, id); err != nil {
				m.cfg.Log.Debug("syncgroup: pull failed", "sg", id, "peer", p, "err", err)
			}
			m.mu.Lock()
			again = m.pulling[key] && m.ctx.Err() == nil
			if again {
				m.pulling[key] = false
			} else {
				delete(m.pulling, key)
			}
			m.mu.Unlock()
		}
	})
}

// PeerConnected pulls, in the background, every syncgroup p is a member of:
// a member that comes back catches up at once.
func (m *Manager) PeerConnected(p peer.ID) {
	for _, rec := range m.Groups() {
		if _, ok := rec.Member(p); ok && p != m.cfg.Self {
			m.pullAsync(p, rec.Spec.ID)
		}
	}
}

// SyncAll pulls every syncgroup from each of its other members, in the
// background: the anti-entropy pass run at start and periodically.
func (m *Manager) SyncAll() {
	for _, rec := range m.Groups() {
		for _, mb := range rec.Members {
			if mb.Peer != m.cfg.Self {
				m.pullAsync(mb.Peer, rec.Spec.ID)
			}
		}
	}
}
