package result

import (
	"reflect"
	"strings"
	"testing"
)

func TestPrintThenScan(t *testing.T) {
	want := Figure{Name: "hit path req/s", Unit: "req/s", Values: []float64{1, 2, 3},
		Anchor: "bare handler", AnchorValues: []float64{2, 2, 2}, Ratio: true, Goal: "ratio >= 0.95"}
	var b strings.Builder
	b.WriteString("a line of progress\n")
	if err := want.Print(&b); err != nil {
		t.Fatal(err)
	}
	var echoed []string
	got, err := Scan(strings.NewReader(b.String()), func(l string) { echoed = append(echoed, l) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if len(echoed) != 1 || echoed[0] != "a line of progress" {
		t.Fatalf("echoed %q", echoed)
	}
}

func TestScanRefusesUnevenRatio(t *testing.T) {
	in := `RESULT {"name":"x","unit":"req/s","values":[1,2],"anchor_values":[1],"ratio":true}` + "\n"
	if _, err := Scan(strings.NewReader(in), nil); err == nil {
		t.Fatal("a ratio with fewer anchor values than values was accepted")
	}
}
