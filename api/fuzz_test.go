package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzPreamble feeds arbitrary first bytes, in two writes, to a server
// connection and checks what reaches HTTP: a complete preamble without
// descriptors is stripped, anything that is not a preamble passes
// untouched, and nothing panics.
func FuzzPreamble(f *testing.F) {
	for _, s := range []string{"UNFD\x00GET / HTTP/1.1\r\n\r\n", "GET /v1/ping HTTP/1.1\r\n\r\n", "UNFD\x01x", "UN", "", "UNFDX"} {
		f.Add([]byte(s), uint8(2))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		client := os.NewFile(uintptr(fds[0]), "client")
		serverFile := os.NewFile(uintptr(fds[1]), "server")
		sc, err := net.FileConn(serverFile)
		serverFile.Close()
		if err != nil {
			client.Close()
			t.Fatal(err)
		}
		conn := &fdConn{UnixConn: sc.(*net.UnixConn)}
		defer conn.Close()
		cut := min(int(split), len(data))
		// Write while the server reads: a large input would fill the
		// socket buffer and block a write made first.
		go func() {
			client.Write(data[:cut])
			client.Write(data[cut:])
			client.Close()
		}()
		got, err := io.ReadAll(conn)
		switch {
		case bytes.HasPrefix(data, []byte("UNFD\x00")):
			if err != nil || !bytes.Equal(got, data[preambleLen:]) {
				t.Fatalf("after an empty preamble read %q, %v; want %q", got, err, data[preambleLen:])
			}
		case len(data) > 0 && !bytes.HasPrefix([]byte(preambleMagic), data[:min(len(data), len(preambleMagic))]):
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("plain bytes read back as %q, %v; want %q", got, err, data)
			}
		default:
			// A preamble that announces descriptors it does not carry, or
			// that stops short, is refused.
			if err == nil && len(data) > 0 {
				t.Fatalf("malformed preamble %q accepted, read %q", data, got)
			}
		}
		if files := conn.takeFiles(); len(files) != 0 {
			t.Fatalf("got %d files from plain bytes", len(files))
		}
	})
}

// FuzzRequestBody posts arbitrary bodies to the endpoints that decode
// JSON (run and exec; network create when both flags are set) and checks
// that each answer is a success or a well-formed error, never a panic.
func FuzzRequestBody(f *testing.F) {
	for _, s := range []string{`{"Args":["true"]}`, `{"Args":["true"],"Ports":[{"HostIP":"::1","ContainerPort":80}]}`, `{"DNS":["x"]}`, `{"Bogus":1}`, `[]`, ``,
		`{"Name":"n","Subnet":"10.1.0.0/16","Gateway":"10.1.0.1","IPRange":"","Options":{"k":"v"}}`, `{"Subnet":"10.1.0.0/33"}`} {
		f.Add([]byte(s), false, false)
		f.Add([]byte(s), true, false)
		f.Add([]byte(s), true, true)
	}
	proc := &fakeProcess{exit: make(chan struct{})}
	close(proc.exit)
	h := NewServer(&fakeEngine{proc: proc}, nil).Handler()
	f.Fuzz(func(t *testing.T, body []byte, exec, network bool) {
		path := "/v1/sandboxes"
		switch {
		case exec && network:
			path = "/v1/networks"
		case exec:
			path = "/v1/sandboxes/web/exec"
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusOK, http.StatusCreated:
		case http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusInternalServerError:
			var e ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message == "" {
				t.Fatalf("error response %q is not an ErrorResponse: %v", rec.Body, err)
			}
		default:
			t.Fatalf("status %d for body %q", rec.Code, body)
		}
	})
}
