// Command goclient shows how an application reads entities through sidecache:
//
//	go run ./examples/goclient -url http://127.0.0.1:8080 items 42
//
// (`make run` serves sample data to try it on.)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"
)

// ErrNotFound is returned when the entity has no row with the id.
var ErrNotFound = errors.New("not found")

// Client reads entities from a sidecache sidecar.
type Client struct {
	BaseURL string
	HTTP    *http.Client
}

// apiError is sidecache's error body.
type apiError struct {
	Code    string `json:"error"`
	Message string `json:"message"`
}

// Get reads one entity into dst and reports where the answer came from (X-Cache).
func (c *Client) Get(ctx context.Context, entity, id string, dst any) (cache string, err error) {
	u := c.BaseURL + "/v1/" + url.PathEscape(entity) + "/" + url.PathEscape(id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	res, err := c.HTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	cache = res.Header.Get("X-Cache")
	if res.StatusCode != http.StatusOK {
		var e apiError
		json.NewDecoder(res.Body).Decode(&e)
		if e.Code == "not_found" {
			return cache, fmt.Errorf("%w: %s %s", ErrNotFound, entity, id)
		}
		return cache, fmt.Errorf("sidecache: %s: %s (%s)", res.Status, e.Message, e.Code)
	}
	// UseNumber keeps 64-bit integers exact.
	dec := json.NewDecoder(res.Body)
	dec.UseNumber()
	return cache, dec.Decode(dst)
}

func main() {
	base := flag.String("url", "http://127.0.0.1:8080", "sidecache address")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: goclient [-url URL] ENTITY ID")
		os.Exit(2)
	}
	c := &Client{BaseURL: *base, HTTP: &http.Client{Timeout: 3 * time.Second}}
	var row map[string]any
	cache, err := c.Get(context.Background(), flag.Arg(0), flag.Arg(1), &row)
	if errors.Is(err, ErrNotFound) {
		fmt.Printf("no such row (X-Cache: %s)\n", cache)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, _ := json.MarshalIndent(row, "", "  ")
	fmt.Printf("X-Cache: %s\n%s\n", cache, out)
}
