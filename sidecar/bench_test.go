package sidecar

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecache/sidecache/readthrough"
)

type fixedReader struct{ body []byte }

func (f fixedReader) Get(ctx context.Context, entity, id string) (readthrough.Result, error) {
	return readthrough.Result{Body: f.body, Status: readthrough.Hit}, nil
}

func (f fixedReader) GetMany(ctx context.Context, entity string, ids []string) (readthrough.Many, error) {
	return readthrough.Many{}, nil
}

// BenchmarkHTTPLayer measures what the HTTP layer adds to a hit: routing, the request timeout,
// metrics and headers, with the read path replaced by a fixed answer. Compare with BenchmarkBareMux.
func BenchmarkHTTPLayer(b *testing.B) {
	body := make([]byte, 400)
	a := &api{reader: fixedReader{body}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		metrics: newHTTPMetrics(prometheus.NewRegistry(), []string{"items"})}
	h, _ := a.routes(http.NotFoundHandler())
	req := httptest.NewRequest("GET", "/v1/items/42", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
	}
}

// BenchmarkBareMux is the baseline for BenchmarkHTTPLayer: a mux route that writes the body.
func BenchmarkBareMux(b *testing.B) {
	body := make([]byte, 400)
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/items/{id}", func(w http.ResponseWriter, r *http.Request) {
		_ = r.PathValue("id")
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
	req := httptest.NewRequest("GET", "/v1/items/42", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
	}
}
