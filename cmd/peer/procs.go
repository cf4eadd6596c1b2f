package main

import "runtime"

// extraProcs is how many Ps a node runs with beyond the runtime's default
// (the CPUs it may use). A goroutine blocked in fsync or a file creation
// keeps its P until the runtime hands it off, and a node makes such calls
// for every blob it stores: with 2 Ps, two of them stop every other
// goroutine. Measured with `peer bench --only small` on 2 cores, in blobs/s:
// 1,710–1,787 with 2 Ps, 1,979–2,180 with 4; fetch_ratio did not move.
const extraProcs = 2

// raiseProcs gives the process extraProcs more Ps than the runtime's
// default, unless GOMAXPROCS is set in the environment.
func raiseProcs(getenv func(string) string) {
	if getenv("GOMAXPROCS") != "" {
		return
	}
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + extraProcs)
}
