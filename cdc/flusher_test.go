package cdc

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"
)

func keysBatch(from, n int, cp *Checkpoint) batch {
	b := batch{n: n, cp: cp, position: strconv.Itoa(from + n)}
	for i := range n {
		b.keys = append(b.keys, strconv.Itoa(from+i))
	}
	return b
}

// TestFlusherMergesWhatWaits: batches handed while the flusher is busy reach it as one, in
// binlog order, with the newest checkpoint and the oldest change's time.
func TestFlusherMergesWhatWaits(t *testing.T) {
	f := newFlusher()
	ctx := context.Background()
	first, second := &Checkpoint{Pos: 1}, &Checkpoint{Pos: 2}
	oldest := time.Unix(1_700_000_000, 0)
	a := keysBatch(0, 2, first)
	a.at = oldest
	a.drops = map[string]string{"items": "statement"}
	b := keysBatch(2, 3, nil)
	b.adds = map[string][]string{"items": {"3"}}
	c := keysBatch(5, 1, second)
	c.at = oldest.Add(time.Second)
	for _, x := range []batch{a, b, c} {
		if err := f.hand(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	got, ok := f.take(ctx)
	if !ok {
		t.Fatal("nothing to take")
	}
	if want := []string{"0", "1", "2", "3", "4", "5"}; !slices.Equal(got.keys, want) {
		t.Errorf("keys %v, want %v", got.keys, want)
	}
	if got.cp != second || !got.at.Equal(oldest) || got.position != "6" || got.n != 6 {
		t.Errorf("checkpoint %v, time %v, position %q, n %d; want the newest checkpoint and position, the oldest time, 6", got.cp, got.at, got.position, got.n)
	}
	if got.drops["items"] != "statement" || !slices.Equal(got.adds["items"], []string{"3"}) {
		t.Errorf("drops %v, adds %v: lost in the merge", got.drops, got.adds)
	}
	tctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, ok := f.take(tctx); ok {
		t.Error("took a batch twice")
	}
}

// TestFlusherBoundsWhatWaits: with flushAt keys waiting, handing more waits until the flusher
// takes them, so a fast binlog and a slow Redis cannot pile batches up.
func TestFlusherBoundsWhatWaits(t *testing.T) {
	f := newFlusher()
	ctx := context.Background()
	if err := f.hand(ctx, keysBatch(0, flushAt, nil)); err != nil {
		t.Fatal(err)
	}
	handed := make(chan error, 1)
	go func() { handed <- f.hand(ctx, keysBatch(flushAt, 1, nil)) }()
	select {
	case err := <-handed:
		t.Fatalf("handed more while %d keys waited (err %v)", flushAt, err)
	case <-time.After(50 * time.Millisecond):
	}
	if b, _ := f.take(ctx); len(b.keys) != flushAt {
		t.Fatalf("took %d keys, want %d", len(b.keys), flushAt)
	}
	if err := <-handed; err != nil {
		t.Fatal(err)
	}
	if b, _ := f.take(ctx); !slices.Equal(b.keys, []string{strconv.Itoa(flushAt)}) {
		t.Errorf("then took %v", b.keys)
	}
	tctx, cancel := context.WithCancel(ctx)
	f.hand(ctx, keysBatch(0, flushAt, nil))
	cancel()
	if err := f.hand(tctx, keysBatch(0, 1, nil)); err == nil {
		t.Error("a hand that waits returned no error when its context ended")
	}
}
