package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// verdict is the comparison of what the sidecars answer with MySQL.
type verdict struct {
	checked    int // ids, per sidecar
	stale      int // answered with values MySQL does not hold
	missing    int // answered missing, though MySQL has the row
	ghost      int // answered with a row MySQL does not have
	unanswered int // ids no answer was had for
	sidecars   int
}

// row is a row of items as MySQL holds it.
type row struct {
	name string
	n    int64
}

// batch is how many ids one multi-get asks for: sidecache's default limits.max_ids.
const batch = 100

// verify reads every id up to maxID (and a few past it, which must be missing) through each
// sidecar and compares the answers, field by field, with MySQL.
func verify(ctx context.Context, root *sql.DB, sidecars []*devstack.Sidecar, maxID int64) (verdict, error) {
	truth := map[int64]row{}
	rows, err := root.QueryContext(ctx, "SELECT id, name, n FROM items")
	if err != nil {
		return verdict{}, err
	}
	for rows.Next() {
		var id int64
		var r row
		if err := rows.Scan(&id, &r.name, &r.n); err != nil {
			rows.Close()
			return verdict{}, err
		}
		truth[id] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return verdict{}, err
	}

	var v verdict
	last := maxID + 3
	v.checked, v.sidecars = int(last), len(sidecars)
	for _, sc := range sidecars {
		wrong := 0
		for from := int64(1); from <= last; from += batch {
			to := min(from+batch-1, last)
			items, err := multiGet(ctx, sc, from, to)
			if err != nil {
				// A sidecar that does not answer for seconds is not asked for the rest.
				fmt.Printf("ids %d..%d through %s: %v; the %d ids from %[1]d on count as unanswered\n", from, to, sc.Addr, err, last-from+1)
				v.unanswered += int(last - from + 1)
				break
			}
			for id := from; id <= to; id++ {
				got, cached := items[strconv.FormatInt(id, 10)]
				want, exists := truth[id]
				problem := ""
				switch {
				case exists && !cached:
					v.missing++
					problem = "missing"
				case !exists && cached:
					v.ghost++
					problem = "a ghost"
				case exists && !same(got, id, want):
					v.stale++
					problem = "stale"
				}
				if problem != "" {
					wrong++
					if wrong <= 5 {
						fmt.Printf("id %d through %s is %s: sidecar %s, MySQL %+v (exists: %v)\n", id, sc.Addr, problem, got, want, exists)
					}
				}
			}
		}
	}
	return v, nil
}

// multiGet asks sc for ids from..to, retrying for a few seconds while it does not answer 200.
func multiGet(ctx context.Context, sc *devstack.Sidecar, from, to int64) (map[string]json.RawMessage, error) {
	var q []string
	for id := from; id <= to; id++ {
		q = append(q, "id="+strconv.FormatInt(id, 10))
	}
	url := "http://" + sc.Addr + "/v1/items?" + strings.Join(q, "&")
	var last error
	for range 50 {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			var body struct {
				Items map[string]json.RawMessage `json:"items"`
			}
			if res.StatusCode == 200 {
				err = json.NewDecoder(res.Body).Decode(&body)
			} else {
				err = fmt.Errorf("HTTP %s", res.Status)
			}
			res.Body.Close()
			if err == nil {
				return body.Items, nil
			}
		}
		last = err
		if !sleep(ctx, 100*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	return nil, last
}

// same reports whether the sidecar's JSON object for id holds exactly want's columns.
func same(got json.RawMessage, id int64, want row) bool {
	var r struct {
		ID   *int64  `json:"id"`
		Name *string `json:"name"`
		N    *int64  `json:"n"`
	}
	dec := json.NewDecoder(bytes.NewReader(got))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil || r.ID == nil || r.Name == nil || r.N == nil {
		return false
	}
	return *r.ID == id && *r.Name == want.name && *r.N == want.n
}
