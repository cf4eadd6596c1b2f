package main

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// command is one subcommand's flags: --data and --json, plus its own.
type command struct {
	fs      *flag.FlagSet
	dataDir string
	json    bool
	env     env
}

func newCommand(name string, e env) *command {
	c := &command{fs: flag.NewFlagSet(name, flag.ContinueOnError), env: e}
	c.fs.SetOutput(io.Discard)
	c.fs.StringVar(&c.dataDir, "data", "", "data directory (default $BLOBSYNC_DATA, else ~/.blobsync)")
	c.fs.BoolVar(&c.json, "json", false, "machine-readable output")
	return c
}

// parse parses args, allowing flags before, between and after the positional
// arguments, and checks their count is within [min, max].
func (c *command) parse(args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := c.fs.Parse(args); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", errUsage, c.fs.Name(), err)
		}
		args = c.fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" { // only reached when "--" follows a flag value
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	switch {
	case len(pos) < min:
		return nil, fmt.Errorf("%w: %s needs %d argument(s), got %d", errUsage, c.fs.Name(), min, len(pos))
	case len(pos) > max:
		return nil, fmt.Errorf("%w: %s takes at most %d argument(s), got %q", errUsage, c.fs.Name(), max, strings.Join(pos, " "))
	}
	dir, err := resolveDataDir(c.dataDir, c.env.getenv)
	if err != nil {
		return nil, err
	}
	c.dataDir = dir
	return pos, nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// resolveDataDir returns the absolute data directory: flag, else
// $BLOBSYNC_DATA, else ~/.blobsync.
func resolveDataDir(flagValue string, getenv func(string) string) (string, error) {
	dir := flagValue
	if dir == "" {
		dir = getenv("BLOBSYNC_DATA")
	}
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", fmt.Errorf("no data directory: give --data DIR or set BLOBSYNC_DATA or HOME")
		}
		dir = filepath.Join(home, ".blobsync")
	}
	return filepath.Abs(dir)
}

// oneLine flattens a possibly multi-line error message.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
