// Package faults injects failures into Redis deletes, for demos and tests that show the retry
// path working. It is off unless configured.
package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/retry"
)

// ErrInjected is the error an injected failure returns.
var ErrInjected = errors.New("faults: injected delete failure")

// Faults fails a fraction of DEL/UNLINK commands and can delay them. Safe for concurrent use;
// the settings change at run time.
type Faults struct {
	rate     atomic.Uint64 // float64 bits
	latency  atomic.Int64  // nanoseconds
	injected prometheus.Counter
}

// New returns Faults with the given settings, registering its counter with reg (nil: not
// registered).
func New(rate float64, latency time.Duration, reg prometheus.Registerer) *Faults {
	f := &Faults{injected: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sidecache_faults_injected_total", Help: "DEL/UNLINK commands failed on purpose by fault injection.",
	})}
	if reg != nil {
		reg.MustRegister(f.injected)
	}
	f.Set(rate, latency)
	return f
}

// Set changes the failure rate (in [0, 1]) and the added latency.
func (f *Faults) Set(rate float64, latency time.Duration) {
	f.rate.Store(math.Float64bits(min(max(rate, 0), 1)))
	f.latency.Store(int64(max(latency, 0)))
}

// Settings returns the current failure rate and latency.
func (f *Faults) Settings() (float64, time.Duration) {
	return math.Float64frombits(f.rate.Load()), time.Duration(f.latency.Load())
}

func isDelete(c redis.Cmder) bool {
	n := strings.ToLower(c.Name())
	return n == "del" || n == "unlink"
}

// fail decides for one delete command, counting the failures it injects.
func (f *Faults) fail() bool {
	if rate := math.Float64frombits(f.rate.Load()); rate > 0 && rand.Float64() < rate {
		f.injected.Inc()
		return true
	}
	return false
}

func (f *Faults) delay(ctx context.Context) {
	if d := time.Duration(f.latency.Load()); d > 0 {
		retry.Sleep(ctx, d)
	}
}

// Hook returns the go-redis hook that applies the faults.
func (f *Faults) Hook() redis.Hook { return hook{f} }

type hook struct{ f *Faults }

func (h hook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !isDelete(cmd) {
			return next(ctx, cmd)
		}
		h.f.delay(ctx)
		if h.f.fail() {
			cmd.SetErr(ErrInjected)
			return ErrInjected
		}
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook fails delete commands one by one and sends the rest on.
func (h hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		kept := cmds[:0:0]
		injected := false
		for _, c := range cmds {
			if isDelete(c) {
				if h.f.fail() {
					c.SetErr(ErrInjected)
					injected = true
					continue
				}
			}
			kept = append(kept, c)
		}
		if injected || len(kept) != len(cmds) {
			h.f.delay(ctx)
		}
		var err error
		if len(kept) > 0 {
			err = next(ctx, kept)
		}
		if err == nil && injected {
			err = ErrInjected
		}
		return err
	}
}

// settings is the admin endpoint's JSON.
type settings struct {
	DeleteFailureRate float64 `json:"delete_failure_rate"`
	DeleteLatency     string  `json:"delete_latency"`
}

// Handler serves GET /faults (the settings) and PUT /faults (change them).
func (f *Faults) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/faults", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.Method {
		case http.MethodGet:
		case http.MethodPut, http.MethodPost:
			var s settings
			dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&s); err != nil {
				http.Error(w, `{"error":"bad_request","message":"want {\"delete_failure_rate\": 0.2, \"delete_latency\": \"10ms\"}"}`, http.StatusBadRequest)
				return
			}
			lat := time.Duration(0)
			if s.DeleteLatency != "" {
				d, err := time.ParseDuration(s.DeleteLatency)
				if err != nil || d < 0 {
					http.Error(w, `{"error":"bad_request","message":"delete_latency is not a duration"}`, http.StatusBadRequest)
					return
				}
				lat = d
			}
			if s.DeleteFailureRate < 0 || s.DeleteFailureRate > 1 {
				http.Error(w, `{"error":"bad_request","message":"delete_failure_rate is outside [0, 1]"}`, http.StatusBadRequest)
				return
			}
			f.Set(s.DeleteFailureRate, lat)
		default:
			w.Header().Set("Allow", "GET, PUT")
			http.Error(w, `{"error":"method_not_allowed","message":"GET or PUT"}`, http.StatusMethodNotAllowed)
			return
		}
		rate, lat := f.Settings()
		json.NewEncoder(w).Encode(settings{DeleteFailureRate: rate, DeleteLatency: lat.String()})
	})
	return mux
}

// CheckLoopback reports whether addr listens on loopback only: the admin endpoint may not be
// reachable from other hosts.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address (want 127.0.0.1:PORT or [::1]:PORT)", host)
	}
	return nil
}
