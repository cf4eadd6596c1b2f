package integration

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestFaultSignpostPeersAllGone: the only holder of a blob has gone for good;
// the server learns of the blob from a normal member that does not hold it,
// and its attempts back off. When a new peer puts the same bytes into the
// group the server fetches them at once, not when its backoff ends.
func TestFaultSignpostPeersAllGone(t *testing.T) {
	const size = 1 << 20
	rng := rand.New(rand.NewPCG(6, 6))
	device, normal, server := groupWithServerAway(t)

	path, data := seededFile(t, rng, size)
	ref := putSG(t, device, path)
	eventually(t, "the normal member to hold the announcement", func() bool { return entries(t, normal) == entries(t, device) })
	device.stop(t) // for good

	back := runChecked(t, server.dir)
	start := time.Now()
	within(t, 20*time.Second, "the server to learn of the blob and fail at it", func() bool {
		b, found := fullStatusOf(t, back).queued(ref)
		return found && b.Attempts >= 1
	})
	// Attempt k+1 waits (500ms + rand[0,500ms)) << k after attempt k fails,
	// at least 1 s, 2 s, 4 s, 8 s: attempts 2, 3, 4, 5 start no sooner than
	// 1 s, 3 s, 7 s, 15 s after the first. Within 8 s of the start, at most
	// 4 attempts can have been made.
	time.Sleep(time.Until(start.Add(8 * time.Second)))
	b, found := fullStatusOf(t, back).queued(ref)
	if !found || b.Attempts > 4 {
		t.Fatalf("8 s after the server started: %+v (queued %v); the backoff allows at most 4 attempts", b, found)
	}
	t.Logf("8 s after the start: %d attempts, last error %q", b.Attempts, b.LastError)

	// Wait for a moment between attempts with the next one well ahead, so
	// that fetching before it says the revival was acted on at once.
	var next time.Time
	within(t, 30*time.Second, "a next attempt at least 3 s ahead", func() bool {
		b, found := fullStatusOf(t, back).queued(ref)
		if !found || b.InFlight || b.NextAttempt == nil || time.Until(*b.NextAttempt) < 3*time.Second {
			return false
		}
		next = *b.NextAttempt
		return true
	})

	late := startChecked(t)
	joinAs(t, late, normal, "normal")
	if got := putSG(t, late, path); got != ref {
		t.Fatalf("the same bytes put again gave %s, want %s", got, ref)
	}
	took := within(t, 20*time.Second, "the server to fetch the revived blob", func() bool { return held(t, back, ref) })
	if fetched := time.Now(); !fetched.Before(next) || took > 5*time.Second {
		t.Errorf("the server fetched the revived blob %v after its put, at %v; its next attempt was due at %v", took, fetched, next)
	}
	verifyHeld(t, back, ref, data)
	t.Logf("fetched %v after the revival; the next attempt was %v further", took.Round(time.Millisecond), time.Until(next).Round(time.Millisecond))
	checkInvariants(t, back, normal, late, server, device)
}

// TestFaultPartitionHeals: the server comes up while the only holder of five
// blobs is away; its attempts back off instead of spinning, and when the
// device returns every blob arrives.
func TestFaultPartitionHeals(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	device, relay, server := groupWithServerAway(t)

	want := map[string][]byte{}
	for i := range 5 {
		path, data := seededFile(t, rng, 200_000+i*100_000)
		want[putSG(t, device, path)] = data
	}
	eventually(t, "the relay to hold the announcements", func() bool { return entries(t, relay) == entries(t, device) })
	device.stop(t)

	back := runChecked(t, server.dir)
	start := time.Now()
	within(t, 20*time.Second, "the server to fail at every blob", func() bool {
		st := fullStatusOf(t, back)
		for ref := range want {
			if b, found := st.queued(ref); !found || b.Attempts < 1 {
				return false
			}
		}
		return true
	})
	// The backoff (see TestFaultSignpostPeersAllGone) allows at most 3
	// attempts per blob in 6 s, 4 in 7 s; 4 is the bound asserted.
	time.Sleep(time.Until(start.Add(6 * time.Second)))
	st := fullStatusOf(t, back)
	for ref := range want {
		if b, found := st.queued(ref); !found || b.Attempts > 4 {
			t.Errorf("6 s into the partition: %+v (queued %v); the backoff allows at most 4 attempts", b, found)
		}
	}

	healed := runChecked(t, device.dir)
	took := allHeld(t, back, want, 15*time.Second, "every blob to arrive after the partition healed")
	t.Logf("all 5 blobs arrived %v after the device returned", took.Round(time.Millisecond))
	checkInvariants(t, back, healed, relay, server, device)
}

// TestFaultNewHolderDuringAnAttempt: a second holder of a blob appears while
// the server's attempt at it is in flight from a slow device; that attempt
// then fails (the device dies). Fetching starts immediately whenever a
// signpost changes (DESIGN §7), so the server must now fetch from the new
// holder at once, not wait out the failed attempt's backoff (at least 4 s
// after two earlier failures) with a holder online.
func TestFaultNewHolderDuringAnAttempt(t *testing.T) {
	const size = 16 << 20
	rng := rand.New(rand.NewPCG(9, 9))
	deviceDir := rateLimited(t, 1<<20) // 16 s for the blob: attempts stay in flight
	device := runChecked(t, deviceDir)
	server := startChecked(t)
	createGroup(t, device)
	joinAs(t, server, device, "server")
	path, data := seededFile(t, rng, size)
	ref := putSG(t, device, path)

	// Two attempts fail mid-transfer (the device killed, then back), so that
	// a third failure earns a backoff of (500ms + rand[0,500ms)) << 3 ≥ 4 s.
	devices := []*daemon{device}
	var moved int64
	for i := uint32(1); ; i++ {
		within(t, 20*time.Second, "an attempt moving bytes", func() bool {
			st := fullStatusOf(t, server)
			b, _ := st.queued(ref)
			n, _ := st.partial(ref)
			return b.InFlight && n >= moved+256<<10
		})
		if i == 3 {
			break
		}
		kill9(t, device)
		within(t, 10*time.Second, "the failed attempt to be counted", func() bool {
			st := fullStatusOf(t, server)
			b, found := st.queued(ref)
			moved, _ = st.partial(ref)
			return found && b.Attempts >= i && !b.InFlight
		})
		device = runChecked(t, deviceDir)
		devices = append(devices, device)
	}

	// While the third attempt is in flight, a new peer puts the same bytes.
	late := startChecked(t)
	joinAs(t, late, server, "normal")
	if got := putSG(t, late, path); got != ref {
		t.Fatalf("the same bytes put again gave %s, want %s", got, ref)
	}
	eventually(t, "the server to hold the new holder's announcement", func() bool { return entries(t, server) == entries(t, late) })
	if b, found := fullStatusOf(t, server).queued(ref); !found || !b.InFlight {
		t.Fatalf("the third attempt is no longer in flight: %+v (queued %v)", b, found)
	}

	kill9(t, device)
	killed := time.Now()
	for !held(t, server, ref) && time.Since(killed) < 2*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	if !held(t, server, ref) {
		b, _ := fullStatusOf(t, server).queued(ref)
		wait := "none"
		if b.NextAttempt != nil {
			wait = b.NextAttempt.Sub(killed).Round(time.Millisecond).String()
		}
		t.Errorf("2 s after its attempt failed, with a new holder announced during it, the server has not fetched the blob: %d attempts, next attempt %s after the failure", b.Attempts, wait)
	}
	within(t, 20*time.Second, "the server to fetch the blob at last", func() bool { return held(t, server, ref) })
	t.Logf("fetched %v after the attempt failed", time.Since(killed).Round(time.Millisecond))
	verifyHeld(t, server, ref, data)
	checkInvariants(t, append(devices, server, late)...)
}

// groupWithServerAway starts a device's group with a normal member and a
// server, then stops the server: it learns of what is put only when it
// comes back.
func groupWithServerAway(t *testing.T) (device, normal, server *daemon) {
	t.Helper()
	device, normal, server = startChecked(t), startChecked(t), startChecked(t)
	createGroup(t, device)
	joinAs(t, normal, device, "normal")
	joinAs(t, server, device, "server")
	server.stop(t)
	return device, normal, server
}
