package check

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Kind is a kind of mismatch between the cache and MySQL.
type Kind int

const (
	// Stale: the cache holds a row that differs from MySQL's.
	Stale Kind = iota + 1
	// Ghost: the cache holds a row that MySQL does not have.
	Ghost
	// WronglyMissing: the cache holds a null marker, or the Bloom filter says "absent", for a
	// row that exists.
	WronglyMissing
)

// What a look may find besides a mismatch.
const (
	consistent Kind = -iota
	notCached
	unreadable
)

func (k Kind) mismatch() bool { return k > 0 }

func (k Kind) String() string {
	switch k {
	case Stale:
		return "stale"
	case Ghost:
		return "ghost"
	case WronglyMissing:
		return "wrongly missing"
	}
	return "kind " + strconv.Itoa(int(k))
}

// Counts are what a round found for the ids it looked at.
type Counts struct {
	// Checked are the ids whose cache entry was compared with MySQL: a row, a null marker, or
	// for an entity with a Bloom filter and nothing cached, the filter's answer for a row
	// that exists.
	Checked int64
	// Stale, Ghost and WronglyMissing count the mismatches that lasted: still there, and
	// still wrong, at the re-check.
	Stale, Ghost, WronglyMissing int64
	// Unreadable are cached values in a format this build does not know: not compared, and
	// not a mismatch (the read path treats them as misses).
	Unreadable int64
	// NotCached are ids looked at with nothing in the cache to compare.
	NotCached int64
	// InFlight are mismatches of the first look that the re-check found gone or changed:
	// changes whose invalidation was on its way. They are not counted as mismatches.
	InFlight int64
	// PastSoftDeadline are hot values past their soft deadline, served stale by design and
	// refreshed on read; they count as stale only if they still differ at the re-check.
	PastSoftDeadline int64
}

// Mismatches is the number of lasting mismatches.
func (c Counts) Mismatches() int64 { return c.Stale + c.Ghost + c.WronglyMissing }

// Add adds o to c.
func (c *Counts) Add(o Counts) {
	c.Checked += o.Checked
	c.Stale += o.Stale
	c.Ghost += o.Ghost
	c.WronglyMissing += o.WronglyMissing
	c.Unreadable += o.Unreadable
	c.NotCached += o.NotCached
	c.InFlight += o.InFlight
	c.PastSoftDeadline += o.PastSoftDeadline
}

// Consistency is the fraction of checked ids without a lasting mismatch; 1 when nothing was
// checked.
func (c Counts) Consistency() float64 {
	if c.Checked == 0 {
		return 1
	}
	return 1 - float64(c.Mismatches())/float64(c.Checked)
}

// Nines is -log10 of the fraction of lasting mismatches: 3 for 99.9%. With no mismatch it is
// what the number checked can show, log10(Checked): 1,000 ids without one show 3 nines, not
// infinitely many. 0 when nothing was checked.
func (c Counts) Nines() float64 {
	switch {
	case c.Checked == 0:
		return 0
	case c.Mismatches() == 0:
		return math.Log10(float64(c.Checked))
	}
	return -math.Log10(float64(c.Mismatches()) / float64(c.Checked))
}

// Figure is the consistency for people: "99.95% (3 nines)", or "100% (≥3 nines)" when no
// mismatch lasted, the nines being what the number checked can show.
func (c Counts) Figure() string {
	if c.Checked == 0 {
		return "nothing checked"
	}
	n := int(math.Floor(c.Nines() + 1e-9)) // 1e-5 is 5 nines, whatever log10 rounds to
	nines := fmt.Sprintf("%d nines", n)
	if n == 1 {
		nines = "1 nine"
	}
	if c.Mismatches() == 0 {
		if n < 1 {
			return "100%"
		}
		return "100% (≥" + nines + ")"
	}
	return percent(c.Consistency()) + "% (" + nines + ")"
}

// percent writes r as a percentage with two decimals, or as many more as it takes not to read
// 100 while it is less.
func percent(r float64) string {
	s := ""
	for d := 2; d <= 12; d++ {
		s = strconv.FormatFloat(100*r, 'f', d, 64)
		if !strings.HasPrefix(s, "100") {
			break
		}
	}
	return strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
}

// Mismatch is one lasting mismatch.
type Mismatch struct {
	ID   string
	Kind Kind
}

// maxExamples is how many lasting mismatches a report names per entity.
const maxExamples = 10

// EntityReport is what a round found for one entity.
type EntityReport struct {
	Entity string
	Counts
	// Lasting names the first lasting mismatches, at most maxExamples.
	Lasting []Mismatch
}

func (er *EntityReport) count(k Kind, id string) {
	switch k {
	case Stale:
		er.Stale++
	case Ghost:
		er.Ghost++
	case WronglyMissing:
		er.WronglyMissing++
	}
	if len(er.Lasting) < maxExamples {
		er.Lasting = append(er.Lasting, Mismatch{ID: id, Kind: k})
	}
}

// Report is what a round found.
type Report struct {
	Entities []EntityReport
	Total    Counts
	// Settle is the longest a mismatch waited for its re-check (0: none was found).
	Settle time.Duration
	// LagUnknown: no binlog tail reported its lag, and UnknownLag stood for it.
	LagUnknown bool
	Elapsed    time.Duration
}

// Summary is the round in one line: "2000 checked, 1 lasting mismatch (1 stale, 0 ghost, 0
// wrongly missing), 0 unreadable, 2 in flight, 5 past soft deadline: 99.95% (3 nines)".
func (r Report) Summary() string {
	t := r.Total
	return fmt.Sprintf("%d checked, %s (%d stale, %d ghost, %d wrongly missing), %d unreadable, %d in flight, %d past soft deadline: %s",
		t.Checked, plural(t.Mismatches(), "lasting mismatch", "lasting mismatches"), t.Stale, t.Ghost, t.WronglyMissing,
		t.Unreadable, t.InFlight, t.PastSoftDeadline, t.Figure())
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.FormatInt(n, 10) + " " + many
}

// Examples names the lasting mismatches the report holds, by entity and kind: "items: stale
// 11, 15; ghost 1000". "" when there are none.
func (r Report) Examples() string {
	var parts []string
	for _, er := range r.Entities {
		var kinds []string
		for _, k := range []Kind{Stale, Ghost, WronglyMissing} {
			var ids []string
			for _, m := range er.Lasting {
				if m.Kind == k {
					ids = append(ids, quoteID(m.ID))
				}
			}
			if len(ids) > 0 {
				kinds = append(kinds, k.String()+" "+strings.Join(ids, ", "))
			}
		}
		if len(kinds) > 0 {
			more := ""
			if n := er.Mismatches() - int64(len(er.Lasting)); n > 0 {
				more = fmt.Sprintf(" and %d more", n)
			}
			parts = append(parts, er.Entity+": "+strings.Join(kinds, "; ")+more)
		}
	}
	return strings.Join(parts, "; ")
}

// quoteID quotes an id unless it is plain letters, digits, '-', '_' and '.'.
func quoteID(id string) string {
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return strconv.Quote(id)
		}
	}
	return id
}

// WriteTable writes the report for people: a row per entity, the lasting mismatches by id,
// notes on what was not counted, and the total.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "entity\tchecked\tstale\tghost\twrongly missing\tunreadable\tconsistency\t")
	for _, er := range r.Entities {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t\n", er.Entity, er.Checked, er.Stale, er.Ghost, er.WronglyMissing, er.Unreadable, er.Figure())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	t := r.Total
	if ex := r.Examples(); ex != "" {
		fmt.Fprintf(w, "lasting mismatches: %s\n", ex)
	}
	if t.InFlight > 0 || t.Mismatches() > 0 {
		lag := "the double-delete delay, the binlog tail's lag and a margin"
		if r.LagUnknown {
			lag = fmt.Sprintf("the double-delete delay and %v, since no binlog tail reported its lag", UnknownLag)
		}
		fmt.Fprintf(w, "in flight: %s settled when looked at again %v later (%s); not counted\n",
			plural(t.InFlight, "mismatch", "mismatches"), r.Settle, lag)
	}
	if t.PastSoftDeadline > 0 {
		fmt.Fprintf(w, "past soft deadline: %s, served stale by design and refreshed on read; counted only if still wrong when looked at again\n",
			plural(t.PastSoftDeadline, "hot value", "hot values"))
	}
	if t.NotCached > 0 {
		fmt.Fprintf(w, "not cached: %s with nothing cached to compare; not counted as checked\n", plural(t.NotCached, "id", "ids"))
	}
	if t.Unreadable > 0 {
		fmt.Fprintf(w, "unreadable: %s in a format this build does not know; not compared (the read path treats them as misses)\n",
			plural(t.Unreadable, "cached value", "cached values"))
	}
	_, err := fmt.Fprintf(w, "total in %v: %s\n", r.Elapsed.Round(time.Millisecond), r.Summary())
	return err
}
