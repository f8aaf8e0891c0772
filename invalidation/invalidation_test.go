package invalidation_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecache/sidecache/invalidation"
)

// flaky fails its first failures calls, then records what it deleted.
type flaky struct {
	mu       sync.Mutex
	failures int
	calls    int
	deleted  [][]string
}

func (f *flaky) Invalidate(_ context.Context, keys ...string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.failures {
		return keys, errors.New("redis: i/o timeout")
	}
	f.deleted = append(f.deleted, slices.Clone(keys))
	return nil, nil
}

func (f *flaky) passes() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.deleted)
}

func TestDeleteTwiceWithRetries(t *testing.T) {
	d := &flaky{failures: 3}
	inv := invalidation.New(invalidation.Options{Deleter: d, Delay: 50 * time.Millisecond, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go inv.Run(ctx)
	start := time.Now()
	second, err := inv.Delete(ctx, []string{"k1", "k2"})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.passes(); len(got) != 1 {
		t.Fatalf("after Delete returned: %v, want the first delete done (after 3 failures)", got)
	}
	select {
	case <-second:
		t.Fatal("the second delete was done at once")
	default:
	}
	<-second
	if since := time.Since(start); since < 50*time.Millisecond {
		t.Errorf("the second delete came after %v, before the delay", since)
	}
	if got := d.passes(); len(got) != 2 || !slices.Equal(got[1], []string{"k1", "k2"}) {
		t.Errorf("passes %v, want the keys deleted twice", got)
	}
}

func TestDeleteGivesUpWithItsContext(t *testing.T) {
	d := &flaky{failures: 1 << 30}
	inv := invalidation.New(invalidation.Options{Deleter: d, RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := inv.Delete(ctx, []string{"k"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's error", err)
	}
}

func TestSecondDeletesFinishInOrder(t *testing.T) {
	d := &flaky{}
	inv := invalidation.New(invalidation.Options{Deleter: d, Delay: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go inv.Run(ctx)
	var dones []<-chan struct{}
	for _, k := range []string{"a", "b", "c"} {
		done, err := inv.Delete(ctx, []string{k})
		if err != nil {
			t.Fatal(err)
		}
		dones = append(dones, done)
	}
	<-dones[2]
	for i, done := range dones[:2] {
		select {
		case <-done:
		default:
			t.Errorf("change %d's second delete is not done though a later one's is", i)
		}
	}
}

// filterLog records filter calls and deletes in the order they happen.
type filterLog struct {
	mu       sync.Mutex
	events   []string
	addFails int
}

func (l *filterLog) record(ev string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

func (l *filterLog) Add(_ context.Context, entity string, ids ...string) error {
	l.mu.Lock()
	fail := l.addFails > 0
	l.addFails--
	l.mu.Unlock()
	if fail {
		return errors.New("redis: i/o timeout")
	}
	l.record("add " + entity + " " + strings.Join(ids, ","))
	return nil
}

func (l *filterLog) Reset(_ context.Context, entity string) error {
	l.record("reset " + entity)
	return nil
}

func (l *filterLog) Invalidate(_ context.Context, keys ...string) ([]string, error) {
	l.record("delete " + strings.Join(keys, ","))
	return nil, nil
}

func (l *filterLog) DropEntity(_ context.Context, _, entity string) ([]string, error) {
	l.record("drop " + entity)
	return nil, nil
}

// TestFiltersBeforeDeletes: a change's filter resets and adds (retried until they succeed) come
// before its first delete, adds to a reset filter are skipped, and OnReset hears of each reset.
func TestFiltersBeforeDeletes(t *testing.T) {
	l := &filterLog{addFails: 2}
	var rebuilt []string
	inv := invalidation.New(invalidation.Options{
		Deleter: l, Dropper: l, Filters: l, OnReset: func(e string) { rebuilt = append(rebuilt, e) },
		Delay: -1, RetryMin: time.Millisecond, RetryMax: time.Millisecond,
	})
	_, done, err := inv.Submit(context.Background(), invalidation.Change{
		Keys: []string{"k1"}, Entities: []string{"orders"},
		Adds:   map[string][]string{"items": {"7"}, "orders": {"9"}},
		Resets: []string{"orders"},
	})
	if err != nil {
		t.Fatal(err)
	}
	<-done
	want := []string{"reset orders", "add items 7", "drop orders", "delete k1"}
	if !slices.Equal(l.events, want) {
		t.Errorf("events %q, want %q", l.events, want)
	}
	if !slices.Equal(rebuilt, []string{"orders"}) {
		t.Errorf("OnReset heard of %q, want [orders]", rebuilt)
	}
}

// TestSecondDeleteWaitsForTheReplica checks that second deletes that fall due together wait
// for the replica once, with each GTID set of theirs, and run only after that wait returns;
// that first deletes do not wait; and that a change without a GTID set is not waited for.
func TestSecondDeleteWaitsForTheReplica(t *testing.T) {
	d := &flaky{}
	calls := make(chan []string, 10)
	release := make(chan struct{})
	inv := invalidation.New(invalidation.Options{Deleter: d, Delay: 30 * time.Millisecond,
		WaitReplica: func(ctx context.Context, gtids []string) {
			calls <- gtids
			select {
			case <-release:
			case <-ctx.Done():
			}
		}})
	ctx := context.Background()
	// Submitted before Run: all three are due at its first look, one batch.
	var dones []<-chan struct{}
	for i, gtid := range []string{"0-1-5", "0-1-5", "0-1-7"} {
		first, done, err := inv.Submit(ctx, invalidation.Change{Keys: []string{"k" + string(rune('a'+i))}, GTID: gtid})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-first:
		default:
			t.Fatal("a first delete waited")
		}
		dones = append(dones, done)
	}
	time.Sleep(40 * time.Millisecond) // every second delete due
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go inv.Run(rctx)
	got := <-calls
	if want := []string{"0-1-5", "0-1-7"}; !slices.Equal(got, want) {
		t.Errorf("the wait got %v, want each GTID set once: %v", got, want)
	}
	if n := len(d.passes()); n != 3 {
		t.Fatalf("%d passes while the replica wait runs, want only the 3 first deletes", n)
	}
	close(release)
	for _, done := range dones {
		<-done
	}
	if n := len(d.passes()); n != 6 {
		t.Errorf("%d passes after the wait, want 6", n)
	}

	// No GTID set (POST .../invalidate without one): no wait at all.
	done, err := inv.Delete(ctx, []string{"plain"})
	if err != nil {
		t.Fatal(err)
	}
	<-done
	select {
	case g := <-calls:
		t.Errorf("a change without a GTID set waited for %v", g)
	default:
	}
}
