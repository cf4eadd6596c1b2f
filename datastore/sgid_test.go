package datastore

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckSyncgroupID(t *testing.T) {
	for _, ok := range []string{"/blobsync/sg/family-photos", "/blobsync/sg/a", "/blobsync/sg/Team_2.v1"} {
		if err := CheckSyncgroupID(ok); err != nil {
			t.Errorf("CheckSyncgroupID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "family", "/blobsync/sg/", "/blobsync/sgx/a", "/ipfs/sg/a", "/blobsync/sg/a/b",
		"/blobsync/sg/a b", "/blobsync/sg/a\x00", "/blobsync/sg/ü", "/blobsync/sg/" + strings.Repeat("x", 200),
		"/blobsync/sg/.", "/blobsync/sg/..", "/blobsync/sg/.hidden", "/blobsync/sg/-x", "/blobsync/sg/_x",
	} {
		if err := CheckSyncgroupID(bad); !errors.Is(err, ErrBadSyncgroupID) {
			t.Errorf("CheckSyncgroupID(%q) = %v, want ErrBadSyncgroupID", bad, err)
		}
	}
}
