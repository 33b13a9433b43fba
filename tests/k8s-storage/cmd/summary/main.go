// Command summary reads `go test -json` output of the upstream storage tests and prints the
// run's summary: totals, failing tests with their trimmed output, allow-listed failures, and
// the closing line "N passed, N failed, N skipped".
//
// Counting: a test is counted when it is a leaf (no subtests ran under it), so a failing suite
// is not counted once per level of nesting. A parent that fails while every subtest passed (a
// failure in the parent's own body or cleanup) is counted as one failure of its own, and so is a
// package that failed without a failing test (build error, panic, -timeout).
//
// "failed" in the closing line counts only failures NOT on the allow-list (known-failures.txt);
// allow-listed failures are listed and counted on the line above it. The exit status is 1 when
// any failure is not allow-listed or when no test ran, else 0.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // set on "build-output" and "build-fail" events
	Test       string
	Output     string
	Elapsed    float64
}

type result struct {
	pkg, name string
	action    string // pass, fail, skip, or "" when the test never finished
	output    []string
	elapsed   float64
}

func main() {
	jsonPath := flag.String("json", "", "go test -json output")
	knownPath := flag.String("known", "", "allow-list file (known-failures.txt)")
	modPrefix := flag.String("module", "k8s.io/apiserver/", "prefix trimmed from package paths in test ids")
	detailPath := flag.String("details", "", "file that receives the full output of every failing test")
	maxLines := flag.Int("lines", 25, "output lines shown per failing test")
	flag.Parse()

	known, err := readKnown(*knownPath)
	if err != nil {
		fatal(err)
	}
	f, err := os.Open(*jsonPath)
	if err != nil {
		fatal(err)
	}
	results, pkgs, pkgOutput, err := readEvents(f)
	f.Close()
	if err != nil {
		fatal(err)
	}

	id := func(pkg, name string) string { return strings.TrimPrefix(pkg, *modPrefix) + ":" + name }

	// A test is a parent when another test of its package is named below it.
	parent := map[string]bool{}
	for _, r := range results {
		if i := strings.LastIndex(r.name, "/"); i >= 0 {
			for n := r.name[:i]; ; {
				parent[id(r.pkg, n)] = true
				j := strings.LastIndex(n, "/")
				if j < 0 {
					break
				}
				n = n[:j]
			}
		}
	}
	childFailed := map[string]bool{}
	for _, r := range results {
		if r.action == "fail" || r.action == "" {
			for n := r.name; ; {
				j := strings.LastIndex(n, "/")
				if j < 0 {
					break
				}
				n = n[:j]
				childFailed[id(r.pkg, n)] = true
			}
		}
	}

	var passed, skipped int
	var failed []*result
	for _, r := range results {
		rid := id(r.pkg, r.name)
		if parent[rid] {
			if (r.action == "fail" || r.action == "") && !childFailed[rid] {
				failed = append(failed, r)
			}
			continue
		}
		switch r.action {
		case "pass":
			passed++
		case "skip":
			skipped++
		default:
			failed = append(failed, r)
		}
	}
	// Packages that failed with no failing test in them.
	pkgHasFail := map[string]bool{}
	for _, r := range failed {
		pkgHasFail[r.pkg] = true
	}
	var pkgNames []string
	for p := range pkgs {
		pkgNames = append(pkgNames, p)
	}
	sort.Strings(pkgNames)
	for _, p := range pkgNames {
		if pkgs[p] != "pass" && pkgs[p] != "skip" && !pkgHasFail[p] {
			failed = append(failed, &result{pkg: p, name: "(package)", action: pkgs[p], output: pkgOutput[p]})
		}
	}
	sort.Slice(failed, func(i, j int) bool {
		return id(failed[i].pkg, failed[i].name) < id(failed[j].pkg, failed[j].name)
	})

	var unexpected, allowed []*result
	listedAndFailed := map[string]bool{}
	for _, r := range failed {
		if key, ok := known.match(id(r.pkg, r.name)); ok {
			allowed = append(allowed, r)
			listedAndFailed[key] = true
		} else {
			unexpected = append(unexpected, r)
		}
	}

	var details io.Writer = io.Discard
	if *detailPath != "" {
		df, err := os.Create(*detailPath)
		if err != nil {
			fatal(err)
		}
		defer df.Close()
		details = df
	}

	fmt.Printf("packages: %d (%s)\n", len(pkgNames), pkgSummary(pkgs, pkgNames))
	fmt.Printf("tests (leaves): %d total, %d passed, %d failed (%d allow-listed), %d skipped\n",
		passed+len(failed)+skipped, passed, len(failed), len(allowed), skipped)
	for _, group := range []struct {
		title string
		list  []*result
	}{{"FAILING (not allow-listed)", unexpected}, {"allow-listed failures (known-failures.txt)", allowed}} {
		if len(group.list) == 0 {
			continue
		}
		fmt.Printf("\n== %s: %d\n", group.title, len(group.list))
		for _, r := range group.list {
			state := r.action
			if state == "" {
				state = "no result (the test binary died while it ran)"
			}
			fmt.Printf("--- %s  [%s, %.1fs]\n", id(r.pkg, r.name), state, r.elapsed)
			if group.title != "FAILING (not allow-listed)" {
				continue
			}
			lines := essential(r.output)
			if len(lines) > *maxLines {
				lines = append(lines[:*maxLines], fmt.Sprintf("... (%d more lines in the details file)", len(lines)-*maxLines))
			}
			for _, l := range lines {
				fmt.Printf("    %s\n", l)
			}
		}
	}
	for _, r := range failed {
		fmt.Fprintf(details, "===== %s [%s]\n%s\n", id(r.pkg, r.name), r.action, strings.Join(r.output, "\n"))
	}
	var stale []string
	for _, k := range known.order {
		if !listedAndFailed[k] {
			stale = append(stale, k)
		}
	}
	if len(stale) > 0 {
		fmt.Printf("\nnote: allow-listed but did not fail in this run (remove when fixed, or not run):\n")
		for _, k := range stale {
			fmt.Printf("  %s\n", k)
		}
	}
	fmt.Println()
	if len(allowed) > 0 {
		fmt.Printf("%d allow-listed failures are not counted as failed below\n", len(allowed))
	}
	fmt.Printf("k8s-storage: %d passed, %d failed, %d skipped\n", passed, len(unexpected), skipped)
	if len(unexpected) > 0 || passed == 0 {
		os.Exit(1)
	}
}

func readEvents(r io.Reader) (map[string]*result, map[string]string, map[string][]string, error) {
	results := map[string]*result{}
	pkgs := map[string]string{}
	pkgOutput := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue // go's own messages (e.g. build errors) printed outside JSON
		}
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			continue
		}
		if e.Action == "build-output" {
			pkg := strings.TrimSuffix(strings.Fields(e.ImportPath + " ")[0], ".test")
			pkgOutput[pkg] = append(pkgOutput[pkg], strings.TrimRight(e.Output, "\n"))
			continue
		}
		if e.Test == "" {
			switch e.Action {
			case "pass", "fail", "skip":
				pkgs[e.Package] = e.Action
			case "output":
				pkgs[e.Package] = pkgs[e.Package] // record the package even if it never ends
				pkgOutput[e.Package] = append(pkgOutput[e.Package], strings.TrimRight(e.Output, "\n"))
			}
			continue
		}
		key := e.Package + "\x00" + e.Test
		r := results[key]
		if r == nil {
			r = &result{pkg: e.Package, name: e.Test}
			results[key] = r
		}
		switch e.Action {
		case "pass", "fail", "skip":
			r.action = e.Action
			r.elapsed = e.Elapsed
		case "output":
			r.output = append(r.output, strings.TrimRight(e.Output, "\n"))
		}
	}
	return results, pkgs, pkgOutput, sc.Err()
}

// essential drops go test's own progress lines from a test's output.
func essential(lines []string) []string {
	var out []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "=== RUN") || strings.HasPrefix(t, "=== PAUSE") ||
			strings.HasPrefix(t, "=== CONT") || strings.HasPrefix(t, "=== NAME") ||
			strings.HasPrefix(t, "--- PASS") || strings.HasPrefix(t, "--- SKIP") || t == "" {
			continue
		}
		out = append(out, l)
	}
	return out
}

func pkgSummary(pkgs map[string]string, names []string) string {
	count := map[string]int{}
	for _, p := range names {
		s := pkgs[p]
		if s == "" {
			s = "unfinished"
		}
		count[s]++
	}
	var parts []string
	for _, s := range []string{"pass", "fail", "skip", "unfinished"} {
		if count[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", count[s], s))
		}
	}
	return strings.Join(parts, ", ")
}

// knownList is the allow-list: test ids, each covering itself and its subtests.
type knownList struct {
	order []string
	set   map[string]bool
}

func (k knownList) match(testID string) (string, bool) {
	for n := testID; ; {
		if k.set[n] {
			return n, true
		}
		j := strings.LastIndex(n, "/")
		if j < 0 || j < strings.Index(n, ":") {
			return "", false
		}
		n = n[:j]
	}
}

// readKnown parses known-failures.txt: "#" comments and blank lines are ignored; every other
// line is "<package>:<test name>  <reason and description>", and the reason is mandatory.
func readKnown(path string) (knownList, error) {
	k := knownList{set: map[string]bool{}}
	if path == "" {
		return k, nil
	}
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return k, nil
		}
		return k, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || !strings.Contains(fields[0], ":") {
			return k, fmt.Errorf("%s:%d: want \"<package>:<test>  <reason>\", got %q", path, n, line)
		}
		if !k.set[fields[0]] {
			k.set[fields[0]] = true
			k.order = append(k.order, fields[0])
		}
	}
	return k, sc.Err()
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "summary:", err)
	os.Exit(2)
}
