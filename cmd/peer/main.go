// Command peer runs and controls a blobsync node: a daemon that stores blobs
// and serves them to peers, and commands that talk to it through its control
// socket (<data>/api.sock).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `peer: a blobsync node

Usage: peer COMMAND [ARGS] [--data DIR] [--json]

Commands:
  init                         create identity and datastore; print the peer ID
  daemon [--listen MA]... [--bootstrap MA]... [--dht-server] [--max-storage SIZE]
         [--metrics HOST:PORT] [--log-level L]
                               run the node until SIGINT or SIGTERM; with a storage
                               budget, copies it does not own are dropped to meet it
  id                           peer ID and listen addresses
  put FILE [--public] [--sg SGID]...
                               store a blob and print its BlobRef (FILE - is stdin);
                               announce it in the syncgroups given
  sg create SGID [--role R] (--open | --allow PEERID,...)
                               create a syncgroup; R is server, normal (default) or leaf
  sg join SGID [--via MA] [--role R]
                               join a syncgroup through a member (default: found in the DHT)
  sg ls                        syncgroups this peer belongs to
  sg members SGID              a syncgroup's members and roles
  get REF [-o FILE] [--from MA]...
                               write a blob to FILE or stdout, fetching it if absent
                               (from the peers given, else where its signpost points)
  has REF                      exit 0 and print the size if held here, exit 1 if not
  ls                           blobs held here
  status                       peers, blobs, shares and pins, transfers, fetch queue
  pin REF, unpin REF           keep a held blob here whatever its shares; release it
  gc                           drop copies this peer no longer owns (never the last copy)
  demo                         a local demonstration: a device and two servers on 127.0.0.1
  bench [--json] [--quick] [--only NAME] [--cpuprofile FILE]
                               the performance benchmarks, on 127.0.0.1

--data DIR defaults to $BLOBSYNC_DATA, else ~/.blobsync.
`

// env is what a command may touch of the process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	e := env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	raiseProcs(e.getenv)
	err := run(ctx, os.Args[1:], e)
	stop()
	os.Exit(report(err, e.stderr))
}

// errUsage marks a command-line mistake (exit 2).
var errUsage = errors.New("usage")

// exitError carries a specific exit status and, if non-empty, a message.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// report prints err as one line on stderr and returns the exit status.
func report(err error, stderr io.Writer) int {
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintf(stderr, "peer: %s\n", ee.msg)
		}
		return ee.code
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "peer: %v (see peer help)\n", oneLine(err))
		return 2
	default:
		fmt.Fprintf(stderr, "peer: %v\n", oneLine(err))
		return 1
	}
}

func run(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return &exitError{code: 2}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "init":
		return cmdInit(ctx, rest, e)
	case "daemon":
		return cmdDaemon(ctx, rest, e)
	case "id":
		return cmdID(ctx, rest, e)
	case "put":
		return cmdPut(ctx, rest, e)
	case "get":
		return cmdGet(ctx, rest, e)
	case "has":
		return cmdHas(ctx, rest, e)
	case "ls":
		return cmdLs(ctx, rest, e)
	case "status":
		return cmdStatus(ctx, rest, e)
	case "sg":
		return cmdSg(ctx, rest, e)
	case "pin":
		return cmdPin(true)(ctx, rest, e)
	case "unpin":
		return cmdPin(false)(ctx, rest, e)
	case "gc":
		return cmdGC(ctx, rest, e)
	case "demo":
		return cmdDemo(ctx, rest, e)
	case "bench":
		return cmdBench(ctx, rest, e)
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, usage)
		return nil
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
}
