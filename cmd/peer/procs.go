package main

import "runtime"

// extraProcs is how many Ps a node runs with beyond the runtime's default
// (the CPUs it may use). A goroutine blocked in fsync or a file creation
// keeps its P until the runtime hands it off, and a node makes such calls
// for every blob it stores: with 2 Ps, two of them stop every other
// goroutine. Measured with `peer bench --only small` on 2 cores, in blobs/s:
// 1,710–1,787 with 2 Ps, 1,979–2,180 with 4. A 1 GiB fetch runs as fast
// either way (570 and 556 MB/s over 3 pairs), but the bare stream it is
// compared with is slower with 4 Ps (671 against 796 MB/s), so fetch_ratio
// reads higher: 0.83 against 0.71.
const extraProcs = 2

// raiseProcs gives the process extraProcs more Ps than the runtime's
// default, unless GOMAXPROCS is set in the environment.
func raiseProcs(getenv func(string) string) {
	if getenv("GOMAXPROCS") != "" {
		return
	}
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + extraProcs)
}
