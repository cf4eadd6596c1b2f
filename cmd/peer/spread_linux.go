//go:build linux

package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// fsTopdirFL is FS_TOPDIR_FL of linux/fs.h (chattr +T), which
// golang.org/x/sys/unix does not define.
const fsTopdirFL = 0x00020000

// spreadSubdirs marks dir as the top of a directory hierarchy, so that
// ext4's allocator looks for a block group for each directory made in it
// starting from the new name's hash (taking the least crowded of those with
// more free inodes and blocks than average), not beside dir; the files made
// there go with it. It is best effort: a file system without the flag keeps
// its own placement.
func spreadSubdirs(dir string) {
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return
	}
	_ = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsTopdirFL))
}
