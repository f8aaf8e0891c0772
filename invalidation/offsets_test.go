package invalidation

import (
	"maps"
	"testing"

	"github.com/segmentio/kafka-go"
)

// step is one thing a worker does with offsets: fetch a message ("refetch": one still in hand,
// which must not be handled twice), finish one, or commit ("lost": the commit fails), where
// want is what it must commit: partition → the next offset to read.
type step struct {
	op        string
	partition int
	offset    int64
	want      map[int]int64
}

func TestOffsetsCommitOnlyBelowTheOldestInHand(t *testing.T) {
	fetch := func(p int, off int64) step { return step{op: "fetch", partition: p, offset: off} }
	refetch := func(p int, off int64) step { return step{op: "refetch", partition: p, offset: off} }
	done := func(p int, off int64) step { return step{op: "done", partition: p, offset: off} }
	commits := func(want map[int]int64) step { return step{op: "commit", want: want} }
	lost := func(want map[int]int64) step { return step{op: "lost", want: want} }
	none := map[int]int64{}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"in order", []step{
			fetch(0, 0), fetch(0, 1), fetch(0, 2), commits(none),
			done(0, 0), commits(map[int]int64{0: 1}),
			done(0, 1), done(0, 2), commits(map[int]int64{0: 3}), commits(none),
		}},
		{"a long wait first holds the commit, not the work", []step{
			fetch(0, 5), fetch(0, 6), fetch(0, 7),
			done(0, 7), done(0, 6), commits(none),
			done(0, 5), commits(map[int]int64{0: 8}),
		}},
		{"a gap in the middle", []step{
			fetch(0, 0), fetch(0, 1), fetch(0, 2), fetch(0, 3),
			done(0, 0), done(0, 2), done(0, 3), commits(map[int]int64{0: 1}),
			done(0, 1), commits(map[int]int64{0: 4}),
		}},
		{"partitions apart", []step{
			fetch(0, 0), fetch(1, 10), fetch(1, 11), fetch(0, 1),
			done(1, 10), done(0, 1), commits(map[int]int64{1: 11}),
			done(0, 0), done(1, 11), commits(map[int]int64{0: 2, 1: 12}),
		}},
		{"offsets the log skips", []step{
			fetch(0, 3), fetch(0, 7), fetch(0, 9),
			done(0, 3), done(0, 9), commits(map[int]int64{0: 7}),
			done(0, 7), commits(map[int]int64{0: 10}),
		}},
		{"read again after a rebalance, from the committed offset", []step{
			fetch(0, 0), fetch(0, 1), fetch(0, 2), done(0, 1), done(0, 2),
			refetch(0, 0), fetch(0, 1), fetch(0, 2), commits(none),
			done(0, 0), commits(map[int]int64{0: 1}),
			done(0, 1), done(0, 2), commits(map[int]int64{0: 3}),
		}},
		{"given back further on, after another worker went ahead", []step{
			fetch(0, 0), fetch(0, 10), fetch(0, 11), done(0, 10), done(0, 11), commits(none),
			done(0, 0), commits(map[int]int64{0: 12}),
		}},
		{"a failed commit is committed again, further on", []step{
			fetch(0, 0), fetch(0, 1), done(0, 0), lost(map[int]int64{0: 1}),
			done(0, 1), commits(map[int]int64{0: 2}),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOffsets("topic")
			for i, s := range tc.steps {
				m := kafka.Message{Topic: "topic", Partition: s.partition, Offset: s.offset}
				switch s.op {
				case "fetch", "refetch":
					if got, want := o.fetched(m), s.op == "fetch"; got != want {
						t.Fatalf("step %d: fetched(%d:%d) = %v, want %v", i, s.partition, s.offset, got, want)
					}
				case "done":
					o.done(m)
				case "commit", "lost":
					msgs := o.uncommitted()
					got := map[int]int64{}
					for _, m := range msgs {
						if m.Topic != "topic" {
							t.Fatalf("step %d: commit for topic %q", i, m.Topic)
						}
						got[m.Partition] = m.Offset + 1 // what CommitMessages commits
					}
					if !maps.Equal(got, s.want) {
						t.Fatalf("step %d: would commit %v, want %v", i, got, s.want)
					}
					if s.op == "commit" {
						o.committed(msgs)
					}
				}
			}
		})
	}
}
