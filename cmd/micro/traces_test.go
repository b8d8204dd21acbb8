package main

import "testing"

// TestClean: what a terminal would act on, control and format characters alike, is shown
// as '?'; other text, in any script, stays.
func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"greeter":                "greeter",
		"Grüße, 世界":              "Grüße, 世界",
		"a\x1b[2Jb":              "a?[2Jb",
		"tab\there\r\n":          "tab?here??",
		"\u0085\u009b31m":        "??31m",
		"user\u202eexe.txt":      "user?exe.txt", // right-to-left override
		"a\u200bb\u2066c\ufeffd": "a?b?c?d",      // zero-width space, isolate, BOM
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}
