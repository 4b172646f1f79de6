// Package report summarizes repeated benchmark figures (median with the
// min-max range) and prints them as markdown tables.
package report

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// Summary is the spread of one figure over repetitions. The zero value
// (N == 0) means "no successful sample".
type Summary struct {
	Median, Min, Max float64
	N                int
}

// Summarize returns the median, min and max of xs (the mean of the two
// middle samples for an even count), ignoring NaNs.
func Summarize(xs []float64) Summary {
	v := slices.DeleteFunc(slices.Clone(xs), math.IsNaN)
	if len(v) == 0 {
		return Summary{}
	}
	slices.Sort(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Summary{Median: m, Min: v[0], Max: v[len(v)-1], N: len(v)}
}

// Format prints the median with prec decimals followed by the range when
// there is more than one sample: "9.91 (9.52-10.42)". A summary without
// samples prints as "-".
func (s Summary) Format(prec int) string {
	if s.N == 0 {
		return "-"
	}
	if s.N == 1 || s.Min == s.Max {
		return fmt.Sprintf("%.*f", prec, s.Median)
	}
	return fmt.Sprintf("%.*f (%.*f-%.*f)", prec, s.Median, prec, s.Min, prec, s.Max)
}

// Ratio prints a/b of two medians as "4.21x", or "-" when either is
// missing or b is zero.
func Ratio(a, b Summary) string {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a.Median/b.Median)
}

// Table is a markdown table built row by row.
type Table struct {
	Header []string
	Rows   [][]string
}

// Add appends a row; short rows are padded with empty cells.
func (t *Table) Add(cells ...string) { t.Rows = append(t.Rows, cells) }

// Write prints the table in markdown with columns padded to line up in
// a terminal too.
func (t *Table) Write(w io.Writer) error {
	widths := make([]int, len(t.Header))
	all := append([][]string{t.Header}, t.Rows...)
	for _, r := range all {
		for i := range widths {
			if i < len(r) {
				widths[i] = max(widths[i], len(r[i]))
			}
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		b.WriteString("|")
		for i, wd := range widths {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			fmt.Fprintf(&b, " %-*s |", wd, c)
		}
		b.WriteString("\n")
	}
	line(t.Header)
	b.WriteString("|")
	for _, wd := range widths {
		b.WriteString(strings.Repeat("-", wd+2) + "|")
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		line(r)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
