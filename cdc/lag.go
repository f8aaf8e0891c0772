package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// LeaderLag reads the status the leading tail publishes to Redis every second and returns how
// far behind the server's binlog head it is. ok is false when no tail reports it: none leads,
// the leader is starting or stalled, or it has not written for a few seconds.
func (t *Tail) LeaderLag(ctx context.Context) (lag time.Duration, ok bool, err error) {
	b, err := t.o.Redis.Get(ctx, t.statusKey()).Bytes()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	var st Status
	if json.Unmarshal(b, &st) != nil {
		return 0, false, nil
	}
	age := time.Since(st.UpdatedAt)
	if st.State != StateTailing || age > 3*time.Second {
		return 0, false, nil
	}
	if st.Behind == 0 {
		return 0, true, nil // caught up when it wrote, and it writes every second
	}
	return time.Duration((st.Behind + age.Seconds()) * float64(time.Second)), true, nil
}
