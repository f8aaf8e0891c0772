package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// demoBinary is the program that runs the demos: a binary of its own, so that the sidecar
// carries neither the charting library nor the in-process Kafka they need.
const demoBinary = "sidecache-demo"

// runDemo is `sidecache demo NAME [--out DIR]`: it hands over to sidecache-demo, found next to
// this binary or on PATH, telling it to run this binary's sidecars.
func runDemo(args []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	path := filepath.Join(filepath.Dir(self), demoBinary)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if path, err = exec.LookPath(demoBinary); err != nil {
			return fmt.Errorf("the demos are a program of their own, %s, neither next to %s nor on PATH (make build builds both)", demoBinary, self)
		}
	}
	argv := append([]string{path, "--sidecache", self}, args...)
	return syscall.Exec(path, argv, os.Environ())
}
