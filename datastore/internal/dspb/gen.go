// Package dspb holds the generated storage encoding of datastore values.
package dspb

// Regenerate with protoc (Debian: protobuf-compiler) and the protoc-gen-go tool
// pinned in go.mod:
//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative meta.proto"
