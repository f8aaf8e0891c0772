package sidecar_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/devstack"
)

// BenchmarkHitPath measures a whole hit in process, from the router to the body written, with
// go-redis on the package's Redis: /redis does a round trip per hit, /near answers from the near
// cache. Its allocs/op is the figure to watch; ns/op mostly measures Redis and the machine.
func BenchmarkHitPath(b *testing.B) {
	for _, bc := range []struct{ name, yaml string }{
		{"redis", ""},
		{"near", "near_cache: {enabled: true, max_staleness: 1h}\n"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			// An id of four digits, as most are: its canonical form is not one of the small
			// numbers strconv keeps ready.
			d := devstack.NewDatabase(b, stack, "", itemsSchema+";INSERT INTO items VALUES (4242, 'many', '42.42')")
			cfg, err := config.Parse([]byte(fmt.Sprintf("mysql:\n  dsn: %q\nredis:\n  addrs: [%q]\n  key_prefix: %q\n%s%s",
				d.DSN, stack.RedisAddr, d.Name+":", bc.yaml, itemsEntity)))
			if err != nil {
				b.Fatal(err)
			}
			sc, err := newSidecar(cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { sc.Close() })
			h := sc.Handler()
			req := httptest.NewRequest("GET", "/v1/items/4242", nil)
			for _, want := range []string{"miss", "hit"} {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if got := w.Header().Get("X-Cache"); w.Code != http.StatusOK || got != want {
					b.Fatalf("warming: %d X-Cache=%q %s, want 200 %s", w.Code, got, w.Body, want)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}
