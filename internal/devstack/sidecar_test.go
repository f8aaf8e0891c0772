package devstack_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// fakeSidecarEnv makes the test binary stand in for `sidecache serve`: it reads the listen
// address from its config and answers every request, or exits at once when the config says
// fail.
const fakeSidecarEnv = "DEVSTACK_FAKE_SIDECAR"

var listenLine = regexp.MustCompile(`(?m)^listen: "([^"]+)"$`)

// init turns the test binary into the fake before TestMain starts a stack.
func init() {
	if os.Getenv(fakeSidecarEnv) != "" {
		fakeSidecar()
	}
}

func fakeSidecar() {
	doc, err := os.ReadFile(os.Args[len(os.Args)-1])
	if err != nil || strings.Contains(string(doc), "fail") {
		fmt.Fprintln(os.Stderr, "sidecache: the config is bad")
		os.Exit(1)
	}
	m := listenLine.FindSubmatch(doc)
	if m == nil {
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, http.ListenAndServe(string(m[1]), http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
	os.Exit(1)
}

func TestStartSidecar(t *testing.T) {
	s := devstack.Require(t, stack)
	t.Setenv(fakeSidecarEnv, "1")
	ctx := context.Background()
	sc, err := s.StartSidecar(ctx, os.Args[0], "fake-good", func(listen string) string {
		return fmt.Sprintf("listen: %q\n", listen)
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.Get("http://" + sc.Addr + "/healthz")
	if err != nil {
		t.Fatalf("the started sidecar does not answer: %v", err)
	}
	res.Body.Close()
	sc.Stop()
	if _, err := (&http.Client{Timeout: time.Second}).Get("http://" + sc.Addr + "/healthz"); err == nil {
		t.Error("the sidecar still answers after Stop")
	}

	start := time.Now()
	_, err = s.StartSidecar(ctx, os.Args[0], "fake-bad", func(string) string { return "fail: true\n" })
	if err == nil || !strings.Contains(err.Error(), "the config is bad") || !strings.Contains(err.Error(), "fake-bad") {
		t.Errorf("a sidecar that exits at once: %v, want an error naming it and quoting its log", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the exit was noticed after %v", d)
	}
}
