package bloom_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/internal/devstack"
)

// slowConn writes at most rate bytes a second: a 100 Mbit/s link between a sidecar and Redis.
type slowConn struct {
	net.Conn
	rate int
}

func (c slowConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), 64<<10)
		time.Sleep(time.Duration(float64(n) / float64(c.rate) * float64(time.Second)))
		m, err := c.Conn.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// TestCommitOverSlowLink: a filter sized for 10 million items (about 11.4 MiB) is rebuilt by a
// client with the sidecar's default redis.timeout (500ms read and write) over a 100 Mbit/s
// link. The scan's bits must reach Redis in pieces that each fit a write deadline, and no
// piece may leave a key without an expiry.
func TestCommitOverSlowLink(t *testing.T) {
	s := devstack.Require(t, stack)
	rc := redis.NewClient(&redis.Options{
		Addr: s.RedisAddr, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond, MaxRetries: 1,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return slowConn{Conn: c, rate: 12_500_000}, nil
		},
	})
	defer rc.Close()
	prefix := fmt.Sprintf("slow%d:", time.Now().UnixNano())
	f := bloom.New(rc, prefix)
	ctx := context.Background()
	params := mustSize(t, 10_000_000, 0.01)
	b, err := f.Begin(ctx, "items", params)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Add(ctx, ids(0, 2000)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cerr := b.Commit(ctx)
	t.Logf("Commit of a %d-bit filter: err=%v after %v", params.M, cerr, time.Since(start).Round(time.Millisecond))
	direct := s.Client(t)
	time.Sleep(200 * time.Millisecond) // let Redis run what reached it
	left, _ := direct.Keys(ctx, prefix+"*scan*").Result()
	for _, k := range left {
		ttl, _ := direct.PTTL(ctx, k).Result()
		n, _ := direct.StrLen(ctx, k).Result()
		t.Logf("left behind: %s, %d bytes, PTTL %v", k, n, ttl)
		if ttl < 0 {
			t.Errorf("scan key %s (%d bytes) has no expiry: it is never evicted under volatile-* and never expires", k, n)
		}
	}
	if cerr != nil {
		t.Errorf("the rebuild cannot commit: %v", cerr)
	}
	if len(left) > 0 && cerr == nil {
		t.Errorf("a committed rebuild left its scan bits behind: %v", left)
	}
	if n := absentCount(t, bloom.New(direct, prefix), ids(0, 2000)); n != 0 {
		t.Errorf("the filter says %d of the scan's ids are absent", n)
	}
}
