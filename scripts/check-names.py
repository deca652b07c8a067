#!/usr/bin/env python3
"""Fails (exit 1) where src/ spells a name that has one home (issue 21):

- a MongoDB server error code as a number anywhere but `src/cluster/server_error.rs`: use the
  named constant of `cluster::server_error::code` (add one there, with the name from MongoDB's
  `src/mongo/base/error_codes.yml`, if it is missing);
- an environment variable's name (`"CUTOVER_..."`, `"RUST_LOG"`, `"NO_COLOR"`, `"USER"`,
  `"LOGNAME"`) or a read of the process environment (`std::env::var`, `var_os`, `vars`,
  `vars_os`) anywhere but `src/base/env.rs`: use its constants and `get`/`get_os`/`all`.

Inside `#[cfg(test)]` items a test may set and remove variables (`std::env::set_var`,
`remove_var`) and spell names as data (a fake environment handed to the plan loader), but not
read the process environment.

A code is recognised by its context, not its value (durations, sizes and ports are numbers
too): a number compared with something named `code` (`code == 11000`, `c.code != 26`,
`code_of(&e) == Some(26)`), a `code: N` field or `"code": N` document key, a match arm or a
`matches!` pattern of numbers when the matched expression names a code, an array of numbers in
a constant named `..._CODES`/`..._ERRORS`, `codes.contains(&N)`, or a number passed to a
function whose name contains `code`. Comments are ignored.

Run by .ci/run; by hand: scripts/check-names.py [--self-test]
"""
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
CODES_HOME = 'src/cluster/server_error.rs'
ENV_HOME = 'src/base/env.rs'

NUM = r'-?\d[\d_]*'
# Something that names a server code: `code`, `c.code`, `code()`, `code_of(&e)`, `"code"`.
CODE_EXPR = r'(?:\bcode\w*(?:\([^()]*\))?|"code"\)?(?:\.unwrap_or\(0\))?)'
CODE_PATTERNS = [
    # code == 11000, c.code != 26, code_of(&e) == Some(26), get_i32("code") == Ok(11000)
    re.compile(CODE_EXPR + r'\s*(?:==|!=)\s*(?:Some|Ok)?\(?\s*' + NUM + r'\b'),
    # 11000 == code
    re.compile(r'\b' + NUM + r'\)?\s*(?:==|!=)\s*[\w.&*]*\bcode'),
    # code: 11000 (a struct field or pattern), "code": 11000 (a document)
    re.compile(r'(?:\bcode|"code")\s*:\s*' + NUM + r'\b'),
    # codes.contains(&11000)
    re.compile(r'\bcodes?\w*\s*\.\s*contains\(\s*&\s*' + NUM + r'\b'),
    # const SHAPE_ERRORS: [i32; 3] = [28, 2, 14];
    re.compile(r'\bconst\s+\w*(?:CODE|ERROR)S?\w*\s*:[^=]*=\s*&?\[\s*' + NUM),
    # A comparison with a number on a line that mentions a code:
    # `Some((i, code, m)) = errs.iter().find(|(_, c, _)| *c != 11000)`
    # (0 and 1 are counters and flags far more often than OK and InternalError).
    re.compile(r'\bcode.*(?:==|!=)\s*(?:Some|Ok)?\(?\s*(?![01]\b)' + NUM + r'\b'),
    re.compile(r'(?:==|!=)\s*(?:Some|Ok)?\(?\s*(?![01]\b)' + NUM + r'\b.*\bcode'),
    # code_is_transient(91), some_code(11000)
    re.compile(r'\b\w*code\w*\(\s*' + NUM + r'\s*[,)]'),
]
# `matches!(<expression naming a code>, 26 | 43)` or `..., Some(26 | 43))`
MATCHES = re.compile(r'\bmatches!\s*\((.*)')
NUM_PATTERN = re.compile(r'(?:^|[,(|]\s*)(?:Some\(|Ok\()?\s*' + NUM + r'\s*(?:\||\)|$|=>|if\b)')
# A match arm of numbers: `11000 =>`, `26 | 43 =>`, `Some(11000) =>`, `Some(26 | 43) =>`.
ARM = re.compile(
    r'^\s*(?:Some\(|Ok\()?\s*' + NUM + r'(?:\s*\|\s*' + NUM + r')*\s*\)?\s*(?:if\b.*)?=>')

ENV_NAME = re.compile(r'"(?:CUTOVER_[A-Z0-9_]*|RUST_LOG|NO_COLOR|USER|LOGNAME)"')
ENV_READ = re.compile(r'\benv::(?:var|var_os|vars|vars_os)\b')
ENV_WRITE = re.compile(r'\benv::(?:set_var|remove_var)\b')


def strip(line, in_block):
    """The line without comments, with digits and braces blanked inside strings (so that
    `"code"` stays visible but a message's `"code 26"` is not a code, and braces count only
    blocks); `in_block`: inside a `/* */` comment at the start. Returns (code, env_text,
    in_block): `env_text` keeps string contents whole, for the variable names."""
    out, keep = [], []
    i, n = 0, len(line)
    in_str = False
    while i < n:
        c = line[i]
        if in_block:
            if line.startswith('*/', i):
                in_block = False
                i += 2
            else:
                i += 1
            continue
        if in_str:
            keep.append(c)
            if c == '\\' and i + 1 < n:
                keep.append(line[i + 1])
                out.append('  ')
                i += 2
                continue
            if c == '"':
                in_str = False
                out.append('"')
            else:
                out.append(' ' if c.isdigit() or c in '{}' else c)
            i += 1
            continue
        if line.startswith('//', i):
            break
        if line.startswith('/*', i):
            in_block = True
            i += 2
            continue
        if c == '"':
            in_str = True
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", line[i:]):
            m = re.match(r"'(\\.|[^\\'])'", line[i:])
            out.append("' '")
            keep.append(m.group(0))
            i += len(m.group(0))
            continue
        out.append(c)
        keep.append(c)
        i += 1
    # A string literal left open continues on the next line; rare enough in this tree not to
    # track (`"code"` and variable names are always on one line).
    return ''.join(out), ''.join(keep), in_block


def scrutinee_names_code(lines, idx):
    """Whether the nearest `match` above line `idx` (within 40 lines) matches on a code."""
    for j in range(idx - 1, max(-1, idx - 40), -1):
        m = re.search(r'\bmatch\b(.*)', lines[j])
        if m:
            return re.search(r'\bcode', m.group(1)) is not None
    return False


def check_source(rel, text):
    """Findings for one file: [(line number, message)]."""
    findings = []
    codes = rel != CODES_HOME
    env = rel != ENV_HOME
    raw = text.split('\n')
    stripped, kept = [], []
    in_block = False
    for line in raw:
        s, k, in_block = strip(line, in_block)
        stripped.append(s)
        kept.append(k)
    # `#[cfg(test)]` items: from the attribute to the end of the item it applies to.
    test = [False] * len(raw)
    depth, test_depth, pending = 0, None, False
    for i, s in enumerate(stripped):
        if re.search(r'#\[cfg\(test\)\]', s):
            pending = True
        if pending or test_depth is not None:
            test[i] = True
        for c in s:
            if c == '{':
                if pending:
                    test_depth, pending = depth, False
                depth += 1
            elif c == '}':
                depth -= 1
                if test_depth is not None and depth == test_depth:
                    test_depth = None
            elif c == ';' and pending and depth >= 0 and test_depth is None:
                # `#[cfg(test)] use ...;` or `#[cfg(test)] mod tests;`
                if not re.search(r'#\[cfg\(test\)\]\s*$', s):
                    pending = False
    for i, s in enumerate(stripped):
        n = i + 1
        if codes:
            hit = any(p.search(s) for p in CODE_PATTERNS)
            m = MATCHES.search(s)
            if not hit and m and re.search(r'\bcode', m.group(1)):
                # the patterns after the matched expression's top-level comma
                body = m.group(1)
                level, cut = 0, None
                for k, c in enumerate(body):
                    if c in '([{':
                        level += 1
                    elif c in ')]}':
                        level -= 1
                    elif c == ',' and level == 0:
                        cut = k
                        break
                if cut is not None and NUM_PATTERN.search(body[cut + 1:]):
                    hit = True
            if not hit and ARM.search(s) and scrutinee_names_code(stripped, i):
                hit = True
            if hit:
                findings.append((n, 'a numeric MongoDB error code: use the named constant in '
                                    'cluster::server_error::code (add it there, named as in '
                                    "MongoDB's error_codes.yml)"))
        if env:
            if ENV_READ.search(s):
                findings.append((n, 'reads the process environment: use crate::base::env '
                                    '(get, get_os, is_set, all)'))
            elif ENV_WRITE.search(s) and not test[i]:
                findings.append((n, 'sets the process environment outside a #[cfg(test)] item'))
            if ENV_NAME.search(kept[i]) and not test[i]:
                findings.append((n, 'an environment variable name: use its constant in '
                                    'crate::base::env (add it there)'))
    return findings


def check_tree():
    bad = 0
    src = os.path.join(ROOT, 'src')
    for dirpath, _, names in sorted(os.walk(src)):
        for name in sorted(names):
            if not name.endswith('.rs'):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, ROOT).replace(os.sep, '/')
            with open(path, encoding='utf-8') as f:
                text = f.read()
            for n, msg in check_source(rel, text):
                print(f'{rel}:{n}: {msg}')
                bad += 1
    if bad:
        print(f'check-names: {bad} finding(s)', file=sys.stderr)
        return 1
    return 0


# Each positive example must give exactly one finding, each negative none.
POSITIVE_CODES = [
    'if code == 11000 {',
    'Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 26) => {}',
    'ErrorKind::Command(c) if c.code == 239 || c.code == 246 => x,',
    'if code_of(&e) == Some(286) {',
    'if code == Some(286) {',
    'Err(e @ EngineError::Write { code: 11000, .. }) => e,',
    'doc! {"code": 64, "codeName": "WriteConcernFailed"}',
    'let dup = e.get_i32("code") == Ok(11000);',
    'if 11000 == w.code {',
    'matches!(code_of(&e), Some(26 | 43))',
    'matches!(c.code, 239 | 246)',
    'const SHAPE_ERRORS: [i32; 3] = [28, 2, 14];',
    'codes.contains(&14031)',
    'assert!(code_is_transient(91));',
    'if let Some((index, code, message)) = write_errors.iter().find(|(_, c, _)| *c != 11000) {',
]
POSITIVE_ARMS = 'match code_of(&e) {\n    Some(11000) => dup(),\n    _ => other(),\n}\n'
NEGATIVE_CODES = [
    'if code == DUPLICATE_KEY {',
    'ErrorKind::Command(c) if c.code == SNAPSHOT_TOO_OLD || c.code == SNAPSHOT_UNAVAILABLE',
    'let code = e.get_i32("code").unwrap_or(0);',
    'doc! {"code": code::WRITE_CONCERN_FAILED}',
    'Duration::from_millis(100)',
    'let port = 27017;',
    'Some(20),',
    'if n == 11000 {',
    'format!("{} (code {})", c.message, c.code)',
    '// 26 NamespaceNotFound: code == 26',
    'let s = "code == 26";',
    'let (i, code) = (0, 1); if i == 0 { return code; }',
    'Exit::Unreachable => 2,',
    'exit_code: 3,',
    '13 | 14 => FormatClass::Ok,',
]
NEGATIVE_ARMS = 'match version {\n    13 | 14 => ok(),\n    _ => other(),\n}\n'
POSITIVE_ENV = [
    'let v = std::env::var("X");',
    'std::env::var_os(name)',
    'env: std::env::vars().collect(),',
    'const LOG: &str = "CUTOVER_LOG";',
    '.env("RUST_LOG")',
    'get("USER")',
    'fn f() { std::env::set_var(LOG, "1"); }',
]
NEGATIVE_ENV = [
    'let v = crate::base::env::get(env::LOG);',
    'let s = "see CUTOVER_LOG for filters";',
    '// std::env::var("CUTOVER_LOG")',
    'let user = "USERS";',
]
NEGATIVE_ENV_TEST = (
    '#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {\n'
    '        std::env::set_var(env::LEASE_TTL, "3s");\n'
    '        load_env(&[("CUTOVER_BIN", "x")]);\n    }\n}\n'
)
POSITIVE_ENV_TEST = '#[cfg(test)]\nmod tests {\n    fn t() { std::env::var("A"); }\n}\n'


def self_test():
    failures = []

    def expect(text, want, rel='src/engine/x.rs'):
        got = check_source(rel, text)
        if len(got) != want:
            failures.append(f'expected {want} finding(s), got {got} in:\n{text}')

    for t in POSITIVE_CODES + POSITIVE_ENV:
        expect(t, 1)
    for t in NEGATIVE_CODES + NEGATIVE_ENV:
        expect(t, 0)
    expect(POSITIVE_ARMS, 1)
    expect(NEGATIVE_ARMS, 0)
    expect(NEGATIVE_ENV_TEST, 0)
    expect(POSITIVE_ENV_TEST, 1)
    # Each home may spell its own names.
    expect('pub const DUPLICATE_KEY: i32 = 11000;\nif code == 11000 {}', 0, CODES_HOME)
    expect('pub const LOG: &str = "CUTOVER_LOG";\nstd::env::var(name)', 0, ENV_HOME)
    # ... but not the other's.
    expect('pub const LOG: &str = "CUTOVER_LOG";', 1, CODES_HOME)
    expect('if code == 11000 {}', 1, ENV_HOME)
    for f in failures:
        print(f'check-names --self-test: {f}', file=sys.stderr)
    if failures:
        return 1
    print('check-names --self-test: ok')
    return 0


if __name__ == '__main__':
    if sys.argv[1:] == ['--self-test']:
        sys.exit(self_test())
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(check_tree())
