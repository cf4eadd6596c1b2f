//go:build !(linux || darwin || freebsd)

package protocol

import "os"

const pageSize = 4096

func mapFile(*os.File, int64, int) ([]byte, error) { return nil, errMapUnsupported }

func unmap([]byte) {}
