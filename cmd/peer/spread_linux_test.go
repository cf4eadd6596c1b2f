package main

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// The bench's directory is marked as the top of a directory hierarchy where
// the file system keeps inode flags, and the flags it had are kept.
func TestSpreadSubdirsSetsTopdir(t *testing.T) {
	dir := t.TempDir()
	flags := func() uint32 {
		f, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fl, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
		if err != nil {
			t.Skipf("%s keeps no inode flags: %v", dir, err)
		}
		return fl
	}
	before := flags()
	spreadSubdirs(dir)
	if got, want := flags(), before|fsTopdirFL; got != want {
		t.Errorf("flags %#x, want %#x", got, want)
	}
}
