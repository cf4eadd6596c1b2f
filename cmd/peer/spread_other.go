//go:build !linux

package main

// spreadSubdirs does nothing here: the flag it sets is ext4's.
func spreadSubdirs(dir string) {}
