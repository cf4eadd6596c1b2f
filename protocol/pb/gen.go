// Package pb holds the generated wire messages of /blobsync/blob/1.0.0. Only
// package protocol imports it.
package pb

// Regenerate with protoc (Debian: protobuf-compiler) and the protoc-gen-go tool
// pinned in go.mod:
//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative blob.proto"
