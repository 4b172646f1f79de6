package report

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"odd", []float64{3, 1, 2}, Summary{Median: 2, Min: 1, Max: 3, N: 3}},
		{"even", []float64{4, 1, 2, 3}, Summary{Median: 2.5, Min: 1, Max: 4, N: 4}},
		{"nan ignored", []float64{math.NaN(), 5}, Summary{Median: 5, Min: 5, Max: 5, N: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, Summarize(tc.in)); diff != "" {
				t.Errorf("Summarize(%v) mismatch (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	got := []string{
		Summary{}.Format(2),
		Summarize([]float64{9.9}).Format(2),
		Summarize([]float64{9.9, 9.5, 10.4}).Format(2),
		Ratio(Summarize([]float64{8}), Summarize([]float64{2})),
		Ratio(Summarize([]float64{8}), Summary{}),
	}
	want := []string{"-", "9.90", "9.90 (9.50-10.40)", "4.00x", "-"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("format mismatch (-want +got):\n%s", diff)
	}
}

func TestTableWrite(t *testing.T) {
	tb := Table{Header: []string{"a", "bb"}}
	tb.Add("xyz", "1")
	tb.Add("q")
	var b strings.Builder
	if err := tb.Write(&b); err != nil {
		t.Fatal(err)
	}
	want := "| a   | bb |\n|-----|----|\n| xyz | 1  |\n| q   |    |\n"
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("Write mismatch (-want +got):\n%s", diff)
	}
}
