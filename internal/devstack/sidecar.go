package devstack

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Sidecar is a `sidecache serve` process started by StartSidecar.
type Sidecar struct {
	Addr    string // the address its config listens on (the data API)
	LogPath string // its stdout and stderr
	p       *proc
}

// StartSidecar runs `bin serve` on a config that config writes for a free loopback address,
// the file and the process's log named after name in the stack's directory, and waits until
// that address answers HTTP. A process that exits first is an error that quotes its log.
func (s *Stack) StartSidecar(ctx context.Context, bin, name string, config func(listen string) string) (*Sidecar, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := filepath.Join(s.Dir, name+".yaml")
	if err := os.WriteFile(cfg, []byte(config(addr)), 0o600); err != nil {
		return nil, err
	}
	sc := &Sidecar{Addr: addr, LogPath: filepath.Join(s.Dir, name+".log")}
	// Any answer will do: with admin_listen set, /healthz is not on this address, but a 404 is
	// still the data API serving.
	client := &http.Client{Timeout: time.Second}
	sc.p, err = launch(ctx, exec.Command(bin, "serve", "--config", cfg), name, sc.LogPath, 30*time.Second, func() error {
		res, err := client.Get("http://" + addr + "/healthz")
		if err == nil {
			res.Body.Close()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	s.logf("%s serving on %s", name, addr)
	return sc, nil
}

// Stop sends SIGTERM (a graceful drain) and waits for the process to exit, killing it after
// 10 s.
func (sc *Sidecar) Stop() { sc.p.stop() }

// Kill ends the process with SIGKILL and waits for it to exit.
func (sc *Sidecar) Kill() { sc.p.kill() }

// Pid is the process's id.
func (sc *Sidecar) Pid() int { return sc.p.cmd.Process.Pid }
