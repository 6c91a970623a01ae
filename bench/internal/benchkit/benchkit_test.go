package benchkit

import "testing"

func TestTable(t *testing.T) {
	got := Table([]string{"peer", "a", "b"}, [][]string{{"x", "1", "2"}, {"y", "error: boom"}})
	want := "| peer | a | b |\n|---|---:|---:|\n| x | 1 | 2 |\n| y | error: boom |  |\n"
	if got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}
