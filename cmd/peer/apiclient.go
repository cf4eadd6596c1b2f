package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
)

// apiClient talks to a running daemon through its control socket.
type apiClient struct {
	http *http.Client
	dir  string
}

func dialAPI(dir string) (*apiClient, error) {
	sock := layout(dir).socket()
	if _, err := os.Stat(sock); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no daemon is running on %s: start one with peer daemon --data %s", dir, dir)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableCompression: true,
	}
	return &apiClient{http: &http.Client{Transport: tr}, dir: dir}, nil
}

// do sends a request and returns the response if its status is 2xx; otherwise
// the daemon's error message as an error.
func (c *apiClient) do(ctx context.Context, method, path string, body io.Reader, contentLength int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://blobsync"+path, body)
	if err != nil {
		return nil, err
	}
	if contentLength >= 0 {
		req.ContentLength = contentLength
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("no daemon is running on %s (stale control socket): start one with peer daemon --data %s", c.dir, c.dir)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e struct{ Error string }
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// call sends a request and decodes a JSON answer into out.
func (c *apiClient) call(ctx context.Context, method, path string, out any) error {
	resp, err := c.do(ctx, method, path, nil, -1)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("control socket: bad answer: %w", err)
	}
	return nil
}
