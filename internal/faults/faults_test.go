package faults_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/faults"
)

func client(t *testing.T, f *faults.Faults) (*redis.Client, *miniredis.Miniredis) {
	mr := miniredis.RunT(t)
	rc := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	rc.AddHook(f.Hook())
	t.Cleanup(func() { rc.Close() })
	return rc, mr
}

func TestHookFailsDeletesOnly(t *testing.T) {
	f := faults.New(1, 0, nil)
	rc, mr := client(t, f)
	ctx := context.Background()
	mr.Set("a", "1")
	mr.Set("b", "1")
	if err := rc.Del(ctx, "a").Err(); !errors.Is(err, faults.ErrInjected) {
		t.Fatalf("DEL at rate 1: %v, want the injected error", err)
	}
	if !mr.Exists("a") {
		t.Fatal("an injected failure still deleted the key")
	}
	if err := rc.Get(ctx, "b").Err(); err != nil {
		t.Fatalf("GET is not a delete but failed: %v", err)
	}
	// In a pipeline, deletes fail one by one and the other commands still run.
	var del *redis.IntCmd
	var set *redis.StatusCmd
	rc.Pipelined(ctx, func(p redis.Pipeliner) error {
		del = p.Del(ctx, "b")
		set = p.Set(ctx, "c", "1", 0)
		return nil
	})
	if !errors.Is(del.Err(), faults.ErrInjected) || set.Err() != nil || !mr.Exists("c") {
		t.Fatalf("pipeline: del %v, set %v", del.Err(), set.Err())
	}
	f.Set(0, 0)
	if err := rc.Del(ctx, "a").Err(); err != nil || mr.Exists("a") {
		t.Fatalf("DEL at rate 0: %v", err)
	}
}

func TestAdminEndpoint(t *testing.T) {
	f := faults.New(0, 0, nil)
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/faults", strings.NewReader(`{"delete_failure_rate": 0.25, "delete_latency": "5ms"}`))
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("PUT: %v %v", res, err)
	}
	if rate, lat := f.Settings(); rate != 0.25 || lat != 5*time.Millisecond {
		t.Fatalf("settings %v %v after PUT", rate, lat)
	}
	for _, bad := range []string{`{"delete_failure_rate": 2}`, `{"delete_latency": "soon"}`, `{"rate": 1}`, `not json`} {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/faults", strings.NewReader(bad))
		res, _ := http.DefaultClient.Do(req)
		if res.StatusCode != 400 {
			t.Errorf("PUT %s: %d, want 400", bad, res.StatusCode)
		}
	}
	if rate, _ := f.Settings(); rate != 0.25 {
		t.Errorf("a rejected PUT changed the rate to %v", rate)
	}
}

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:9091": true, "[::1]:9091": true, "localhost:9091": true,
		"0.0.0.0:9091": false, ":9091": false, "10.0.0.5:9091": false} {
		if err := faults.CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v", addr, err)
		}
	}
}
