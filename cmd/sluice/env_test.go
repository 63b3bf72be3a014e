package main

import (
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
)

// A SLUICE_ variable that no command reads is an error naming it, with the
// name it was probably meant to be; the known ones, other variables and the
// test harness's SLUICETEST_ switches pass.
func TestUnknownVariables(t *testing.T) {
	err := checkEnv([]string{"PATH=/bin", "SLUICE_RATE=10/s", "SLUICE_CONCURENCY=10"})
	if err == nil || !strings.Contains(err.Error(), "SLUICE_CONCURENCY (did you mean SLUICE_CONCURRENCY?)") {
		t.Fatalf("a typo: %v", err)
	}
	if err := checkEnv([]string{"SLUICE_NO_SUCH_THING_AT_ALL=1"}); err == nil || strings.Contains(err.Error(), "did you mean") {
		t.Fatalf("a name far from any: %v", err)
	}
	env := []string{"HOME=/root", "SLUICETEST_REQUIRE_DOCKER=1", "REDIS_IMAGE=x"}
	for name := range knownEnv() {
		env = append(env, name+"=x")
	}
	if err := checkEnv(env); err != nil {
		t.Fatalf("known variables refused: %v", err)
	}
}

// Every variable a command's --help lists is known, so a command's new
// variable cannot be refused as unknown by another.
func TestHelpVariablesAreKnown(t *testing.T) {
	known := knownEnv()
	listed := regexp.MustCompile(`\b(SLUICE_[A-Z0-9_]+)\b`)
	for name, c := range commands {
		out := captureStdout(t, func() { c.run([]string{"--help"}) })
		for _, m := range listed.FindAllStringSubmatch(out, -1) {
			if !known[m[1]] {
				t.Errorf("sluice %s --help lists %s, which checkEnv does not know", name, m[1])
			}
		}
	}
}

// captureStdout returns what f writes to os.Stdout (and os.Stderr, where
// some commands print their help).
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = w, w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	f()
	os.Stdout, os.Stderr = stdout, stderr
	_ = w.Close()
	return <-done
}
