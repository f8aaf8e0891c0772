package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/readthrough"
)

// Errors of the HTTP layer itself.
var (
	errNoRoute          = errors.New("no such route")
	errUnknownLookup    = errors.New("no such lookup is configured for the entity")
	errMethodNotAllowed = errors.New("method not allowed")
	errDeleteFailed     = errors.New("cache delete failed")
)

// Header values shared by every response; net/http does not modify them.
var (
	contentJSON = []string{"application/json"}
	xCache      = map[readthrough.Status][]string{
		readthrough.Hit: {"hit"}, readthrough.Miss: {"miss"}, readthrough.Negative: {"negative"},
		readthrough.Stale: {"stale"}, readthrough.Bypass: {"bypass"},
	}
)

// reader is what the HTTP layer needs of the read path.
type reader interface {
	Get(ctx context.Context, entity, id string) (readthrough.Result, error)
	GetMany(ctx context.Context, entity string, ids []string) (readthrough.Many, error)
}

// invalidator is what the HTTP layer needs for POST .../invalidate.
type invalidator interface {
	Invalidate(ctx context.Context, entity, id string) error
}

// api serves the HTTP API.
type api struct {
	reader  reader
	inval   invalidator
	log     *slog.Logger
	metrics *httpMetrics
	ready   func(context.Context) error
	status  func(context.Context) Status
	// separateAdmin: probes, /status and /metrics are on admin_listen, not with the data API.
	separateAdmin bool
	// lookups holds each configured lookup's entity name (keys.Lookup), and the names of the
	// entities that have lookups.
	lookups map[string]bool
	// lastErrLog rate-limits error logs to one a second, so an outage does not flood the log.
	lastErrLog atomic.Int64
}

// routes returns the data API (/v1/...) and the admin endpoints (probes, /status, /metrics),
// each with a 404 for anything else. With admin false the data API serves both.
func (a *api) routes(metrics http.Handler) (data, admin http.Handler) {
	dataMux, adminMux := http.NewServeMux(), http.NewServeMux()
	dataMux.HandleFunc("/v1/{entity}/{id}", a.getOne)
	dataMux.HandleFunc("/v1/{entity}/{lookup}/{value}", a.getLookup)
	dataMux.HandleFunc("/v1/{entity}/{id}/invalidate", a.invalidate)
	dataMux.HandleFunc("/v1/{entity}", a.getMany)
	for _, mux := range []*http.ServeMux{dataMux, adminMux} {
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			a.writeError(w, "", errNoRoute)
		})
	}
	if !a.separateAdmin {
		adminMux = dataMux
	}
	adminMux.HandleFunc("/healthz", a.healthz)
	adminMux.HandleFunc("/readyz", a.readyz)
	adminMux.HandleFunc("/status", a.statusz)
	adminMux.Handle("/metrics", metrics)
	return dataMux, adminMux
}

// onlyGET answers 405 for anything but GET and reports whether the request may go on.
func (a *api) onlyGET(w http.ResponseWriter, r *http.Request) bool {
	return a.only(w, r, http.MethodGet)
}

func (a *api) only(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	w.Header().Set("Allow", method)
	a.writeError(w, "", errMethodNotAllowed)
	return false
}

// invalidate is the synchronous update-then-delete for applications that invalidate right
// after their own write: the key is deleted (and its lease voided) before the 204, and deleted
// again after cdc.double_delete_delay.
func (a *api) invalidate(w http.ResponseWriter, r *http.Request) {
	if lookup := keys.Lookup(r.PathValue("entity"), r.PathValue("id")); r.Method == http.MethodGet && a.lookups[lookup] {
		a.get(w, r, lookup, "invalidate") // a lookup of the value "invalidate"
		return
	}
	if !a.only(w, r, http.MethodPost) {
		return
	}
	entity := r.PathValue("entity")
	if err := a.inval.Invalidate(r.Context(), entity, r.PathValue("id")); err != nil {
		a.writeError(w, entity, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// reading is a read request under way, for its metrics.
type reading struct {
	a      *api
	entity string
	start  time.Time
}

// startRead answers 405 for anything but GET; otherwise it counts the read in flight until
// its end.
func (a *api) startRead(w http.ResponseWriter, r *http.Request, entity string) (reading, bool) {
	if !a.onlyGET(w, r) {
		return reading{}, false
	}
	a.metrics.inFlight.Inc()
	return reading{a: a, entity: entity, start: time.Now()}, true
}

// end records the read's outcome and latency.
func (rd reading) end(outcome string) {
	rd.a.metrics.inFlight.Dec()
	rd.a.metrics.observe(rd.entity, outcome, rd.start)
}

func (a *api) getOne(w http.ResponseWriter, r *http.Request) {
	if entity, ok := a.entityOf(w, r); ok {
		a.get(w, r, entity, r.PathValue("id"))
	}
}

// entityOf is the request's entity. A name with a '/' (users%2Fby-email, decoded) names a
// lookup, which is read through its own route only: it is answered unknown_entity here.
func (a *api) entityOf(w http.ResponseWriter, r *http.Request) (string, bool) {
	e := r.PathValue("entity")
	if strings.Contains(e, "/") {
		a.writeError(w, "", fmt.Errorf("%w: %q", readthrough.ErrUnknownEntity, e))
		return "", false
	}
	return e, true
}

// getLookup answers GET /v1/{entity}/{lookup}/{value}: the lookup reads like an entity of its
// own, keys.Lookup(entity, lookup), whose ids are the unique key's values.
func (a *api) getLookup(w http.ResponseWriter, r *http.Request) {
	entity := keys.Lookup(r.PathValue("entity"), r.PathValue("lookup"))
	if !a.lookups[entity] {
		err := errNoRoute // an entity without lookups has no such path
		if a.lookups[r.PathValue("entity")] {
			err = errUnknownLookup
		}
		a.writeError(w, r.PathValue("entity"), err)
		return
	}
	a.get(w, r, entity, r.PathValue("value"))
}

func (a *api) get(w http.ResponseWriter, r *http.Request, entity, id string) {
	rd, ok := a.startRead(w, r, entity)
	if !ok {
		return
	}
	// No request deadline here: a hit is one Redis GET bounded by redis.timeout, and the read
	// path puts limits.request_timeout on a miss itself, so hits do not pay for a timer.
	res, err := a.reader.Get(r.Context(), entity, id)
	if res.Status != "" {
		w.Header()["X-Cache"] = xCache[res.Status]
	}
	if err != nil {
		a.writeError(w, entity, err)
		rd.end(outcomeOf(res, err))
		return
	}
	h := w.Header()
	h["Content-Type"] = contentJSON
	w.Write(res.Body)
	rd.end(string(res.Status))
}

func (a *api) getMany(w http.ResponseWriter, r *http.Request) {
	entity, ok := a.entityOf(w, r)
	if !ok {
		return
	}
	rd, ok := a.startRead(w, r, entity)
	if !ok {
		return
	}
	many, err := a.reader.GetMany(r.Context(), entity, r.URL.Query()["id"])
	if err != nil {
		a.writeError(w, entity, err)
		rd.end(outcomeOf(readthrough.Result{}, err))
		return
	}
	size := 32
	for _, it := range many.Items {
		size += len(it.ID) + len(it.Body) + 4
	}
	b := make([]byte, 0, size)
	b = append(b, `{"items":{`...)
	for i, it := range many.Items {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSON(b, it.ID)
		b = append(b, ':')
		b = append(b, it.Body...)
	}
	b = append(b, `},"missing":`...)
	if many.Missing == nil {
		many.Missing = []string{}
	}
	b = appendJSON(b, many.Missing)
	b = append(b, '}')
	h := w.Header()
	h["Content-Type"] = contentJSON
	h["X-Cache"] = xCache[many.Status]
	w.Write(b)
	rd.end(string(many.Status))
}

func appendJSON(b []byte, v any) []byte {
	j, err := json.Marshal(v)
	if err != nil {
		panic(err) // strings and string slices always marshal
	}
	return append(b, j...)
}

func (a *api) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header()["Content-Type"] = contentJSON
	w.Write([]byte(`{"status":"ok"}`))
}

func (a *api) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.ready(ctx); err != nil {
		a.logFailure("", "not_ready", err)
		// The part that failed, never the error's text: it carries addresses.
		part := "mysql"
		switch {
		case errors.Is(err, errRedisDown):
			part = "redis"
		case errors.Is(err, errReplicaDown):
			part = "mysql replica"
		}
		writeJSONError(w, http.StatusServiceUnavailable, "not_ready", part+" is unavailable")
		return
	}
	w.Header()["Content-Type"] = contentJSON
	w.Write([]byte(`{"status":"ready"}`))
}

// statusz reports every part's state as JSON: MySQL, Redis, the binlog tail, the filters.
func (a *api) statusz(w http.ResponseWriter, r *http.Request) {
	if !a.onlyGET(w, r) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	b, err := json.Marshal(a.status(ctx))
	if err != nil {
		a.writeError(w, "", err)
		return
	}
	w.Header()["Content-Type"] = contentJSON
	w.Write(b)
}

// classify is the one place that turns errors into HTTP statuses and error codes.
func classify(err error) (status int, code string) {
	switch {
	case errors.Is(err, readthrough.ErrNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, readthrough.ErrUnknownEntity):
		return http.StatusNotFound, "unknown_entity"
	case errors.Is(err, readthrough.ErrInvalidID):
		return http.StatusBadRequest, "invalid_id"
	case errors.Is(err, readthrough.ErrTooManyIDs):
		return http.StatusBadRequest, "too_many_ids"
	case errors.Is(err, errNoRoute):
		return http.StatusNotFound, "no_route"
	case errors.Is(err, errUnknownLookup):
		return http.StatusNotFound, "unknown_lookup"
	case errors.Is(err, errMethodNotAllowed):
		return http.StatusMethodNotAllowed, "method_not_allowed"
	case errors.Is(err, errDeleteFailed):
		return http.StatusServiceUnavailable, "cache_unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "timeout"
	case errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, "canceled"
	case errors.Is(err, readthrough.ErrCacheUnavailable):
		return http.StatusServiceUnavailable, "cache_unavailable"
	case errors.Is(err, readthrough.ErrDBUnavailable):
		return http.StatusServiceUnavailable, "db_unavailable"
	case errors.Is(err, readthrough.ErrWaitTimeout):
		return http.StatusServiceUnavailable, "wait_timeout"
	case errors.Is(err, readthrough.ErrOverloaded):
		return http.StatusServiceUnavailable, "overloaded"
	}
	return http.StatusInternalServerError, "internal"
}

// serverMessages are the messages of the 5xx codes. A server-side error's own text goes to the
// log only: it names hosts, ports and users.
var serverMessages = map[string]string{
	"timeout":           "the request took longer than limits.request_timeout",
	"canceled":          "the request was canceled",
	"cache_unavailable": "the cache (Redis) is unavailable",
	"db_unavailable":    "the database (MySQL) is unavailable",
	"wait_timeout":      "another sidecar's load of this key took longer than lease.wait",
	"overloaded":        "the cache (Redis) is unavailable and this sidecar reached degraded.max_db_rate; retry later",
	"internal":          "internal error",
}

func (a *api) writeError(w http.ResponseWriter, entity string, err error) {
	status, code := classify(err)
	if code == "internal" {
		// Unexpected, so always logged; the client is not shown the details (a panic's stack).
		a.log.Error("request failed", "entity", entity, "err", err)
		writeJSONError(w, status, code, serverMessages[code])
		return
	}
	if status >= 500 {
		if code == "overloaded" {
			w.Header().Set("Retry-After", "1") // the limiter refills within a second
		} else if code != "canceled" {
			a.logFailure(entity, code, err)
		}
		writeJSONError(w, status, code, serverMessages[code])
		return
	}
	// A client error's text is about the request itself: the id or entity it named.
	writeJSONError(w, status, code, err.Error())
}

// logFailure logs a server-side failure with its details, at most once a second, so that an
// outage does not flood the log.
func (a *api) logFailure(entity, code string, err error) {
	now := time.Now().UnixNano()
	if last := a.lastErrLog.Load(); now-last >= int64(time.Second) && a.lastErrLog.CompareAndSwap(last, now) {
		a.log.Warn("request failed", "entity", entity, "code", code, "err", err)
	}
}

func writeJSONError(w http.ResponseWriter, status int, code, message string) {
	b, _ := json.Marshal(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{code, message})
	w.Header()["Content-Type"] = contentJSON
	w.WriteHeader(status)
	w.Write(b)
}

// outcomeOf names a failed request's outcome for metrics: "negative" for a null marker, the
// error code ("not_found", "invalid_id", ...) otherwise.
func outcomeOf(res readthrough.Result, err error) string {
	if res.Status == readthrough.Negative {
		return string(res.Status)
	}
	_, code := classify(err)
	return code
}
