// Package udiff produces unified diffs of two texts, line by line, in the
// format of `diff -u`, for -noop output and the demo's change reports.
package udiff

import (
	"fmt"
	"strings"
)

// Diff returns a unified diff turning a into b, labelled with the two file
// names, or "" when the texts are equal. context is the number of unchanged
// lines shown around each change (diff -u uses 3).
func Diff(nameA, nameB string, a, b []byte, context int) string {
	if string(a) == string(b) {
		return ""
	}
	al, bl := splitLines(string(a)), splitLines(string(b))
	ops := editScript(al, bl)
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", nameA, nameB)
	for _, h := range hunks(ops, context) {
		writeHunk(&out, h, al, bl)
	}
	return out.String()
}

type opKind int

const (
	keep opKind = iota
	del
	ins
)

// op is one step of the edit script: a line of a kept or deleted, or a line
// of b inserted.
type op struct {
	kind opKind
	a, b int // line indexes into a and b at this step
}

// editScript finds a shortest edit script with Myers' O(ND) algorithm.
func editScript(a, b []string) []op {
	n, m := len(a), len(b)
	max := n + m
	v := make([]int, 2*max+2)
	var trace [][]int
	for d := 0; d <= max; d++ {
		snapshot := append([]int(nil), v...)
		trace = append(trace, snapshot)
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[max+k-1] < v[max+k+1]) {
				x = v[max+k+1]
			} else {
				x = v[max+k-1] + 1
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x++
				y++
			}
			v[max+k] = x
			if x >= n && y >= m {
				return backtrack(trace, v, a, b, d, max)
			}
		}
	}
	return nil
}

func backtrack(trace [][]int, last []int, a, b []string, d, max int) []op {
	x, y := len(a), len(b)
	var ops []op
	trace = append(trace[1:], last)
	for ; d > 0; d-- {
		v := trace[d-1]
		k := x - y
		var prevK int
		if k == -d || (k != d && v[max+k-1] < v[max+k+1]) {
			prevK = k + 1
		} else {
			prevK = k - 1
		}
		prevX := v[max+prevK]
		prevY := prevX - prevK
		for x > prevX && y > prevY {
			x--
			y--
			ops = append(ops, op{keep, x, y})
		}
		if x == prevX {
			y--
			ops = append(ops, op{ins, x, y})
		} else {
			x--
			ops = append(ops, op{del, x, y})
		}
	}
	for x > 0 && y > 0 {
		x--
		y--
		ops = append(ops, op{keep, x, y})
	}
	for i, j := 0, len(ops)-1; i < j; i, j = i+1, j-1 {
		ops[i], ops[j] = ops[j], ops[i]
	}
	return ops
}

type hunk struct{ ops []op }

// hunks groups changes with up to context kept lines around them, merging
// groups whose contexts touch.
func hunks(ops []op, context int) []hunk {
	var out []hunk
	i := 0
	for i < len(ops) {
		for i < len(ops) && ops[i].kind == keep {
			i++
		}
		if i == len(ops) {
			break
		}
		start := i - context
		if start < 0 {
			start = 0
		}
		end := i
		for end < len(ops) {
			if ops[end].kind != keep {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == keep {
				run++
			}
			if run == len(ops) || run-end > 2*context {
				end += min(context, run-end)
				break
			}
			end = run
		}
		out = append(out, hunk{ops: ops[start:end]})
		i = end
	}
	return out
}

func writeHunk(out *strings.Builder, h hunk, a, b []string) {
	aStart, bStart := h.ops[0].a, h.ops[0].b
	aLen, bLen := 0, 0
	for _, o := range h.ops {
		if o.kind != ins {
			aLen++
		}
		if o.kind != del {
			bLen++
		}
	}
	fmt.Fprintf(out, "@@ -%s +%s @@\n", rangeOf(aStart, aLen), rangeOf(bStart, bLen))
	for _, o := range h.ops {
		switch o.kind {
		case keep:
			writeLine(out, ' ', a[o.a])
		case del:
			writeLine(out, '-', a[o.a])
		case ins:
			writeLine(out, '+', b[o.b])
		}
	}
}

func rangeOf(start, length int) string {
	if length == 0 {
		return fmt.Sprintf("%d,0", start)
	}
	if length == 1 {
		return fmt.Sprint(start + 1)
	}
	return fmt.Sprintf("%d,%d", start+1, length)
}

func writeLine(out *strings.Builder, mark byte, line string) {
	out.WriteByte(mark)
	if strings.HasSuffix(line, "\n") {
		out.WriteString(line)
		return
	}
	out.WriteString(line)
	out.WriteString("\n\\ No newline at end of file\n")
}

// splitLines keeps each line's newline, so a missing final newline shows.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}
