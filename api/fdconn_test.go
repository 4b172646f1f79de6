package api

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// listenPair returns a wrapped listener accepting uid's connections and a
// dialled client connection; the server side is accepted by the caller.
func listenPair(t *testing.T, uid int) (net.Listener, *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l := WrapListener(ul, uid, nil)
	t.Cleanup(func() { l.Close() })
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return l, c
}

func TestPeerCredRejectsOtherUsers(t *testing.T) {
	l, c := listenPair(t, os.Getuid()+1)
	accepted := make(chan error, 1)
	go func() {
		conn, err := l.Accept()
		if err == nil {
			conn.Close()
			err = errors.New("accepted a connection from the wrong uid")
		}
		accepted <- err
	}()
	// The listener closes the connection without a word.
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("read from rejected connection = %d, %v; want 0, EOF", n, err)
	}
	l.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept = %v, want net.ErrClosed after Close", err)
	}
}

func TestPreamble(t *testing.T) {
	tests := []struct {
		name      string
		writes    []string // each sent with one sendmsg; the first carries the files
		files     int
		wantRead  string
		wantFiles int
		wantErr   string
	}{
		{name: "no preamble", writes: []string{"GET /v1/ping HTTP/1.1\r\n\r\n"}, wantRead: "GET /v1/ping HTTP/1.1\r\n\r\n"},
		{name: "short plain request", writes: []string{"G"}, wantRead: "G"},
		{name: "preamble and request together", writes: []string{"UNFD\x01GET / HTTP/1.1\r\n\r\n"}, files: 1,
			wantRead: "GET / HTTP/1.1\r\n\r\n", wantFiles: 1},
		{name: "preamble split", writes: []string{"UN", "FD\x00", "POST"}, wantRead: "POST"},
		{name: "three files", writes: []string{"UNFD\x03", "x"}, files: 3, wantRead: "x", wantFiles: 3},
		{name: "count mismatch", writes: []string{"UNFD\x02x"}, files: 1, wantErr: "announced 2 file descriptors, received 1"},
		{name: "closed during preamble", writes: []string{"UNF"}, wantErr: "connection closed during preamble"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, c := listenPair(t, os.Getuid())
			var files []*os.File
			for range tc.files {
				f, err := os.Open(os.DevNull)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				files = append(files, f)
			}
			for i, w := range tc.writes {
				var oob []byte
				if i == 0 && len(files) > 0 {
					fds := make([]int, len(files))
					for j, f := range files {
						fds[j] = int(f.Fd())
					}
					oob = unix.UnixRights(fds...)
				}
				if _, _, err := c.WriteMsgUnix([]byte(w), oob, nil); err != nil {
					t.Fatal(err)
				}
			}
			c.CloseWrite()
			conn, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			got, err := io.ReadAll(conn)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("read = %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if diff := cmp.Diff(tc.wantRead, string(got)); diff != "" {
				t.Errorf("bytes seen by HTTP mismatch (-want +got):\n%s", diff)
			}
			passed := conn.(*fdConn).takeFiles()
			defer closeFiles(passed)
			if len(passed) != tc.wantFiles {
				t.Errorf("received %d files, want %d", len(passed), tc.wantFiles)
			}
		})
	}
}

// TestPassedFileUsableAndClosed passes a pipe's write end, writes through
// the received copy, and checks that closing the connection closes a copy
// nobody took.
func TestPassedFileUsableAndClosed(t *testing.T) {
	l, c := listenPair(t, os.Getuid())
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	if err := sendPreamble(c, []*os.File{pw, pw}); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	c.CloseWrite()
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The first read consumes the preamble; nothing follows it.
	if n, err := conn.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read past the preamble = %d, %v; want 0, EOF", n, err)
	}
	fc := conn.(*fdConn)
	taken := fc.takeFiles()
	if len(taken) != 2 {
		t.Fatalf("took %d files, want 2", len(taken))
	}
	io.WriteString(taken[0], "through the passed fd")
	taken[0].Close()
	fc.files = taken[1:] // leave one for Close to clean up
	conn.Close()
	got, err := io.ReadAll(pr) // EOF only once every copy is closed
	if err != nil || string(got) != "through the passed fd" {
		t.Errorf("pipe read = %q, %v; want the written text", got, err)
	}
}

func TestSendPreambleRejectsTooManyFiles(t *testing.T) {
	_, c := listenPair(t, os.Getuid())
	files := make([]*os.File, maxPassedFiles+1)
	for i := range files {
		files[i] = os.Stdin
	}
	if err := sendPreamble(c, files); err == nil {
		t.Error("sendPreamble with too many files succeeded")
	}
}
