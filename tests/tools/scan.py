#!/usr/bin/env python3
"""Lists the external commands that the test, bench and packaging scripts run.

    tests/tools/scan.py FILE...      prints "command<TAB>file:line" for each use

A heuristic, deliberately simple (tests/tools/run.sh compares its output with tests/tools.txt):
  - shell (*.sh and extensionless bash scripts): a small lexer that knows quotes, comments,
    $(...), `...`, <(...), ${...}, $((...)), redirections, here-documents (skipped: their
    bodies are usually Python or config), case patterns and the wrappers timeout/env/exec/
    xargs/sudo/nohup/nice/command. A word in command position counts when it looks like a
    command name; words with a $ in them (a variable: "$HELM", "${E[@]}"), relative paths
    (the repository's own scripts) and functions defined in the same file, or in a file it
    sources as `. "$(dirname "${BASH_SOURCE[0]}")/REL"` (scripts/lib.sh), do not.
  - Python: a string literal that starts the argument list of subprocess.run/Popen/call/
    check_call/check_output, or shutil.which("...").
  - Rust: Command::new("...").
Shell builtins and keywords are dropped here; everything else is reported, and the caller
decides what is allowed.
"""
import os
import re
import sys

KEYWORDS_CMD = {"if", "then", "elif", "else", "do", "while", "until", "!", "{", "time", "coproc"}
KEYWORDS_END = {"fi", "done", "esac", "}", "in"}
# Wrappers whose first non-option word (after their own arguments) is another command.
WRAPPERS = {"timeout", "env", "exec", "xargs", "sudo", "nohup", "nice", "command", "builtin",
            "stdbuf", "setsid", "ionice", "flock"}
BUILTINS = set("""
. : [ [[ ]] alias bg bind break builtin caller cd command compgen complete compopt continue
declare dirs disown echo enable eval exec exit export false fc fg getopts hash help history
jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly return set
shift shopt source suspend test times trap true type typeset ulimit umask unalias unset wait
""".split())
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
SEPARATORS = {";", "\n", "|", "&", "&&", "||", "(", ")", ";;", ";&", ";;&", "|&"}


def read_balanced(s, i, open_ch, close_ch):
    """s[i] is just after an opening open_ch; returns (inner text, index after the closer)."""
    depth, j, quote = 1, i, None
    while j < len(s):
        c = s[j]
        if quote:
            if c == "\\" and quote == '"':
                j += 1
            elif c == quote:
                quote = None
        elif c == "\\":
            j += 1
        elif c in "'\"":
            quote = c
        elif c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return s[i:j], j + 1
        j += 1
    return s[i:], len(s)


def lex(s, subs):
    """Shell text -> list of (kind, text, offset), kind "w" (word) or "op". Command
    substitutions found on the way are appended to subs as (text, offset) to scan too."""
    toks, i, n = [], 0, len(s)
    word, wstart, redirect = None, 0, False

    def end_word():
        nonlocal word, redirect
        if word is not None:
            if redirect:
                redirect = False  # the redirection's target, not a command
            else:
                toks.append(("w", word, wstart))
            word = None

    def add(text):
        nonlocal word, wstart
        if word is None:
            word, wstart = "", i
        word += text

    while i < n:
        c = s[i]
        if c == "\\":
            if i + 1 < n and s[i + 1] == "\n":
                i += 2
                continue
            add(s[i + 1:i + 2])
            i += 2
        elif c == "'":
            j = s.find("'", i + 1)
            j = n if j < 0 else j
            add(s[i + 1:j])
            i = j + 1
        elif c == '"':
            j, text = i + 1, ""
            while j < n and s[j] != '"':
                if s[j] == "\\":
                    text += s[j + 1:j + 2]
                    j += 2
                elif s.startswith("$((", j):
                    _, j = read_balanced(s, j + 3, "(", ")")
                    j += 1  # the second closing parenthesis
                    text += "$"
                elif s.startswith("$(", j):
                    inner, k = read_balanced(s, j + 2, "(", ")")
                    subs.append((inner, j + 2))
                    text, j = text + "$", k
                elif s[j] == "`":
                    k = s.find("`", j + 1)
                    k = n if k < 0 else k
                    subs.append((s[j + 1:k], j + 1))
                    text, j = text + "$", k + 1
                else:
                    text += s[j]
                    j += 1
            add(text)
            i = j + 1
        elif s.startswith("$((", i) or (s.startswith("((", i) and word is None):
            # Arithmetic: $((...)) and the ((...)) command (also for ((...)) loops).
            _, i = read_balanced(s, i + (3 if c == "$" else 2), "(", ")")
            i += 1
            add("$")
        elif s.startswith("$(", i) or s.startswith("<(", i) or s.startswith(">(", i):
            inner, j = read_balanced(s, i + 2, "(", ")")
            subs.append((inner, i + 2))
            add("$")
            i = j
        elif s.startswith("${", i):
            _, i = read_balanced(s, i + 2, "{", "}")
            add("$")
        elif c == "`":
            j = s.find("`", i + 1)
            j = n if j < 0 else j
            subs.append((s[i + 1:j], i + 1))
            add("$")
            i = j + 1
        elif c == "#" and word is None:
            j = s.find("\n", i)
            i = n if j < 0 else j
        elif c in " \t":
            end_word()
            i += 1
        elif c in "<>" or (c == "&" and s.startswith("&>", i)):
            # A redirection (an fd number before it is part of it): skip the target word.
            if word is not None and word.isdigit():
                word = None
            end_word()
            j = i + 1
            while j < n and s[j] in "<>&|":
                j += 1
            if s[j:j + 1] == "-":
                j += 1
            redirect = True
            i = j
        elif c in ";&|()\n":
            end_word()
            for op in (";;&", ";;", ";&", "&&", "||", "|&"):
                if s.startswith(op, i):
                    break
            else:
                op = c
            toks.append(("op", op, i))
            i += len(op)
        else:
            add(c)
            i += 1
    end_word()
    return toks


def strip_heredocs(text):
    """Blanks out here-document bodies (keeping line numbers)."""
    lines, out, end = text.split("\n"), [], []
    for line in lines:
        if end:
            out.append("")
            body = line.lstrip("\t") if end[0][1] else line
            if body == end[0][0]:
                end.pop(0)
            continue
        out.append(line)
        for m in re.finditer(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2", line):
            end.append((m.group(3), m.group(1) == "-"))
    return "\n".join(out)


FUNCTION = re.compile(r"^\s*(?:function\s+)?([A-Za-z_][A-Za-z0-9_-]*)\s*\(\)", re.M)
SOURCED = re.compile(r'^\s*(?:\.|source)\s+"\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)(/[^"]+)"', re.M)


def sourced_functions(path, text):
    """The functions defined in the files that the script at path sources by a path relative to itself."""
    found = set()
    for rel in SOURCED.findall(text):
        try:
            found |= set(FUNCTION.findall(open(os.path.dirname(path) + rel, encoding="utf-8").read()))
        except OSError:
            pass
    return found


def shell_commands(text, base=0, functions=None):
    """Yields (command, offset) for every word in command position."""
    if functions is None:
        functions = set(FUNCTION.findall(text))
    subs = []
    toks = lex(text, subs)
    expect, wrapper, case_depth, in_pattern, skip_words = True, None, 0, False, 0
    last_case, array, prev = False, False, None
    for kind, tok, off in toks:
        # x=(a b c): the words of an array assignment are data.
        starts_array = kind == "op" and tok == "(" and prev is not None and prev[0] == "w" \
            and ASSIGN.match(prev[1]) and prev[1].endswith("=")
        prev = (kind, tok)
        if starts_array:
            array = True
            continue
        if array:
            if kind == "op" and tok == ")":
                array = False
            continue
        if kind == "op":
            if in_pattern and tok == ")":
                in_pattern, expect = False, True
                continue
            if tok in (";;", ";&", ";;&") and case_depth:
                in_pattern = True
            if in_pattern:
                continue
            expect, wrapper, skip_words = True, None, 0
            continue
        if in_pattern:
            continue
        if tok == "esac":
            case_depth = max(0, case_depth - 1)
            expect = False
            continue
        if not expect:
            if tok == "in" and case_depth and not in_pattern and last_case:
                in_pattern = True
            continue
        if wrapper:
            if wrapper == "command" and tok in ("-v", "-V"):
                wrapper, expect = None, False  # a lookup (command -v X), not a use
                continue
            if tok.startswith("-") or (wrapper == "env" and ASSIGN.match(tok)):
                continue
            if skip_words:
                skip_words -= 1
                continue
            wrapper = None
        if ASSIGN.match(tok) or tok in KEYWORDS_CMD:
            continue
        last_case = False
        if tok == "case":
            case_depth += 1
            last_case = True
            expect = False
            continue
        if tok in KEYWORDS_END or tok in ("for", "select", "function"):
            expect = False
            continue
        expect = False
        if tok in functions or tok in BUILTINS - {"command", "builtin", "exec"}:
            continue
        if "$" in tok:
            continue
        if "/" in tok:
            if not tok.startswith("/"):
                continue  # the repository's own scripts
            tok = tok.rsplit("/", 1)[1]
        if not NAME.match(tok):
            continue
        if tok in WRAPPERS:
            if tok not in ("command", "builtin", "exec"):
                yield tok, base + off
            wrapper, expect = tok, True
            skip_words = 1 if tok in ("timeout", "flock") else 0
            continue
        yield tok, base + off
    for inner, off in subs:
        yield from shell_commands(inner, base + off, functions)


def python_commands(text):
    for m in re.finditer(r"(?:subprocess\.(?:run|Popen|call|check_call|check_output)|"
                         r"\bPopen)\(\s*\[\s*[rbf]?[\"']([^\"'\s]+)[\"']", text):
        yield m.group(1).rsplit("/", 1)[-1], m.start(1)
    for m in re.finditer(r"shutil\.which\(\s*[\"']([^\"']+)[\"']", text):
        yield m.group(1), m.start(1)


def rust_commands(text):
    for m in re.finditer(r"Command::new\(\s*\"([^\"]+)\"", text):
        yield m.group(1).rsplit("/", 1)[-1], m.start(1)


def main(paths):
    for path in paths:
        try:
            text = open(path, encoding="utf-8", errors="replace").read()
        except OSError as e:
            print(f"scan.py: {path}: {e}", file=sys.stderr)
            return 2
        shell = not path.endswith((".py", ".rs"))
        if path.endswith(".py"):
            found = python_commands(text)
        elif path.endswith(".rs"):
            found = rust_commands(text)
        else:
            body = strip_heredocs(text)
            found = shell_commands(body, functions=set(FUNCTION.findall(body)) | sourced_functions(path, text))
        for cmd, off in found:
            # (A builtin is only a builtin to the shell: Python and Rust exec the program.)
            if NAME.match(cmd) and not (shell and cmd in BUILTINS):
                print(f"{cmd}\t{path}:{text.count(chr(10), 0, off) + 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
