// Package pb holds the generated wire messages of /blobsync/blob/1.0.0 and of
// the syncgroup protocols. Only package protocol imports it.
package pb

// Regenerate with protoc (Debian: protobuf-compiler) and the protoc-gen-go tool
// pinned in go.mod:
//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative blob.proto"
//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative sg.proto"
