//! KMM's kernel variables and their expansion, with KMM's exact semantics.
//!
//! KMM (`internal/utils/replaceStrings.go`, `internal/module/kernelmapper.go`, `internal/kernel/kernel.go`
//! in kubernetes-sigs/kernel-module-management) does this:
//!
//! - The kernel is first *normalised*: every character outside `[A-Za-z0-9._-]` becomes `_`
//!   (`5.14.0+rt` → `5.14.0_rt`). Templates see the normalised kernel.
//! - It is split at every `.`, `,` and `-` (a `,` has become `_` by then); `KERNEL_XYZ` is the first three fields joined with `.`,
//!   `KERNEL_X`/`_Y`/`_Z` are fields 0, 1 and 2 (no check that they are numbers: `6.1.0-56-amd64` gives
//!   `6.1.0`, `4.18.0-305.el8.x86_64` gives `4.18.0`, `6.1-rc1` gives `6.1.rc1`). A kernel with fewer
//!   than three fields is refused (recent KMM returns an error; older KMM panicked on the index).
//! - The variables are `KERNEL_FULL_VERSION`, `KERNEL_VERSION` (both the whole normalised kernel),
//!   `KERNEL_XYZ`, `KERNEL_X`, `KERNEL_Y`, `KERNEL_Z`, and for container images `MOD_NAME` and
//!   `MOD_NAMESPACE`.
//! - Substitution is `github.com/a8m/envsubst/parse` with no restrictions: `$VAR` and `${VAR}` are both
//!   replaced, an unknown variable becomes the empty string, `$$` is a literal `$`, `${VAR-default}`,
//!   `${VAR:-default}`, `${VAR=default}`, `${VAR:=default}`, `${VAR+other}` and `${VAR:+other}` work as in
//!   the shell (the default is either text or one `$VAR`), a `$` not followed by a name, `{` or `$` stays
//!   as it is, and the only error is a `${` without its `}` on the same line ("closing brace expected").
//! - The build arguments KMM injects into every build use the kernel *as the node reports it*
//!   (not normalised): `KERNEL_VERSION`, `KERNEL_FULL_VERSION`, `MOD_NAME`, `MOD_NAMESPACE`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The kernel and module a template is expanded for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelVars {
    /// The kernel as the node reports it (`status.nodeInfo.kernelVersion`).
    pub kernel: String,
    /// The Module's name (`MOD_NAME`).
    pub module_name: String,
    /// The Module's namespace (`MOD_NAMESPACE`).
    pub namespace: String,
}

/// The fields KMM derives from a kernel version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelComponents {
    /// The normalised kernel (`KERNEL_FULL_VERSION`, `KERNEL_VERSION` in templates).
    pub normalized: String,
    /// `KERNEL_XYZ`.
    pub xyz: String,
    /// `KERNEL_X`.
    pub x: String,
    /// `KERNEL_Y`.
    pub y: String,
    /// `KERNEL_Z`.
    pub z: String,
}

impl KernelComponents {
    /// Splits `kernel` as KMM does (after normalising it).
    pub fn parse(kernel: &str) -> Result<Self> {
        let normalized = normalize(kernel);
        let fields: Vec<&str> = normalized.split(['.', ',', '-']).collect();
        if fields.len() < 3 {
            return Err(Error::KernelVersion { kernel: kernel.to_string() });
        }
        Ok(KernelComponents { xyz: fields[..3].join("."), x: fields[0].to_string(), y: fields[1].to_string(), z: fields[2].to_string(), normalized })
    }
}

/// KMM's `NormalizeVersion`: every character outside `[A-Za-z0-9._-]` becomes `_`.
pub fn normalize(kernel: &str) -> String {
    kernel.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') { c } else { '_' }).collect()
}

impl KernelVars {
    /// Variables for `kernel` and the Module `namespace`/`module_name`.
    pub fn new(kernel: impl Into<String>, module_name: impl Into<String>, namespace: impl Into<String>) -> Self {
        KernelVars { kernel: kernel.into(), module_name: module_name.into(), namespace: namespace.into() }
    }

    /// Variables for a kernel alone (`MOD_NAME` and `MOD_NAMESPACE` are empty).
    pub fn kernel_only(kernel: impl Into<String>) -> Self {
        Self::new(kernel, "", "")
    }

    /// The variables as KMM passes them to the substitution, in KMM's order.
    pub fn variables(&self) -> Result<Vec<(&'static str, String)>> {
        let c = KernelComponents::parse(&self.kernel)?;
        Ok(vec![
            ("KERNEL_FULL_VERSION", c.normalized.clone()),
            ("KERNEL_VERSION", c.normalized),
            ("KERNEL_XYZ", c.xyz),
            ("KERNEL_X", c.x),
            ("KERNEL_Y", c.y),
            ("KERNEL_Z", c.z),
            ("MOD_NAME", self.module_name.clone()),
            ("MOD_NAMESPACE", self.namespace.clone()),
        ])
    }

    /// Expands `text` as KMM expands `containerImage`: fails where KMM fails (a kernel that does not
    /// split into three fields, even when `text` uses no variable; a `${` without `}`).
    pub fn expand(&self, text: &str) -> Result<String> {
        let vars = self.variables()?;
        let env: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
        substitute(text, &env).map_err(|reason| Error::Template { template: text.to_string(), reason })
    }

    /// The build arguments KMM injects into every build (they override user arguments of the same
    /// name). The kernel is the node's, not normalised.
    pub fn build_args(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("KERNEL_VERSION".to_string(), self.kernel.clone()),
            ("KERNEL_FULL_VERSION".to_string(), self.kernel.clone()),
            ("MOD_NAME".to_string(), self.module_name.clone()),
            ("MOD_NAMESPACE".to_string(), self.namespace.clone()),
        ])
    }
}

// ---- The substitution: a8m/envsubst's lexer and parser, re-stated ----

/// Operators inside `${…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Plus,
    Dash,
    Equals,
    ColonEquals,
    ColonDash,
    ColonPlus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Text(String),
    /// A variable as lexed: with its leading `$` outside braces.
    Var(String),
    /// `${`
    Open,
    /// `}` (with any unemitted text before it).
    Close(String),
    Op(Op, String),
}

const UNCLOSED: &str = "closing brace expected";

/// A name character: `_`, a letter or a digit (envsubst's `isAlphaNumeric`).
fn is_name(c: char) -> bool {
    c == '_' || c.is_alphabetic() || c.is_numeric()
}

struct Lexer<'a> {
    input: &'a str,
    pos: usize,
    start: usize,
    /// Where the most recently emitted token started.
    last: usize,
    depth: usize,
    out: Vec<Tok>,
}

enum State {
    Text,
    Variable,
    Operator,
    Inside,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn pending(&self) -> String {
        self.input[self.start..self.pos].to_string()
    }

    fn emit(&mut self, tok: Tok) {
        self.out.push(tok);
        self.last = self.start;
        self.start = self.pos;
    }

    fn opens_here(&self) -> bool {
        self.input[self.last..].starts_with("${")
    }

    fn run(mut self) -> Result<Vec<Tok>, &'static str> {
        let mut state = State::Text;
        loop {
            state = match state {
                State::Text => match self.text() {
                    Some(s) => s,
                    None => return Ok(self.out),
                },
                State::Variable => self.variable(),
                State::Operator => self.operator()?,
                State::Inside => self.inside()?,
            };
        }
    }

    /// Plain text up to a `$`; `None` at the end of the input.
    fn text(&mut self) -> Option<State> {
        loop {
            match self.next() {
                None => {
                    if self.pos > self.start {
                        let t = self.pending();
                        self.emit(Tok::Text(t));
                    }
                    return None;
                }
                Some('$') => {
                    self.pos -= 1;
                    if self.pos > self.start {
                        let t = self.pending();
                        self.emit(Tok::Text(t));
                    }
                    self.pos += 1;
                    match self.peek() {
                        Some('$') => {
                            // `$$`: drop the first, keep the second as text.
                            self.start = self.pos;
                            self.next();
                            let t = self.pending();
                            self.emit(Tok::Text(t));
                        }
                        Some('{') => {
                            self.next();
                            self.depth += 1;
                            self.emit(Tok::Open);
                            return Some(State::Operator);
                        }
                        Some(c) if is_name(c) => return Some(State::Variable),
                        _ => {}
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn variable(&mut self) -> State {
        while self.peek().is_some_and(is_name) {
            self.next();
        }
        let v = self.pending();
        if v == "_" || v == "$_" {
            return State::Text;
        }
        self.emit(Tok::Var(v));
        if self.depth > 0 { State::Operator } else { State::Text }
    }

    fn operator(&mut self) -> Result<State, &'static str> {
        let op = |o: Op, l: &mut Self| {
            let t = l.pending();
            l.emit(Tok::Op(o, t));
        };
        match self.next() {
            Some('}') => {
                self.depth -= 1;
                let t = self.pending();
                self.emit(Tok::Close(t));
                return Ok(State::Text);
            }
            None | Some('\r' | '\n') => return Err(UNCLOSED),
            Some(c) if is_name(c) && self.opens_here() => return Ok(State::Variable),
            Some('+') => op(Op::Plus, self),
            Some('-') => op(Op::Dash, self),
            Some('=') => op(Op::Equals, self),
            Some(':') => match self.next() {
                Some('-') => op(Op::ColonDash, self),
                Some('=') => op(Op::ColonEquals, self),
                Some('+') => op(Op::ColonPlus, self),
                _ => {}
            },
            Some(_) => {}
        }
        Ok(State::Inside)
    }

    fn inside(&mut self) -> Result<State, &'static str> {
        loop {
            match self.next() {
                Some('}') => {
                    self.depth -= 1;
                    let t = self.pending();
                    self.emit(Tok::Close(t));
                    return Ok(State::Text);
                }
                None | Some('\r' | '\n') => return Err(UNCLOSED),
                Some(c) if is_name(c) && self.opens_here() => return Ok(State::Variable),
                Some('$') => return Ok(State::Variable),
                Some(_) => {
                    let t = self.pending();
                    self.emit(Tok::Text(t));
                }
            }
        }
    }
}

enum Node {
    Text(String),
    Var(String),
    Subst { op: Option<Op>, var: String, default: Option<Box<Node>> },
}

fn parse(tokens: Vec<Tok>) -> Result<Vec<Node>, &'static str> {
    let mut toks = tokens.into_iter().peekable();
    let mut nodes = Vec::new();
    while let Some(t) = toks.next() {
        match t {
            Tok::Var(v) => nodes.push(Node::Var(v.strip_prefix('$').unwrap_or(&v).to_string())),
            Tok::Open if matches!(toks.peek(), Some(Tok::Var(_))) => {
                let Some(Tok::Var(var)) = toks.next() else { unreachable!("peeked a variable") };
                let (mut op, mut default) = (None, None);
                loop {
                    match toks.next() {
                        Some(Tok::Close(_)) => break,
                        Some(Tok::Var(v)) => default = Some(Box::new(Node::Var(v.strip_prefix('$').unwrap_or(&v).to_string()))),
                        Some(Tok::Text(mut text)) => {
                            while let Some(t) = toks.next_if(|t| !matches!(t, Tok::Close(_))) {
                                text.push_str(&tok_text(&t));
                            }
                            default = Some(Box::new(Node::Text(text)));
                        }
                        Some(Tok::Op(o, _)) => op = Some(o),
                        // envsubst would loop forever here (only after an unlexed `$_` inside braces).
                        Some(Tok::Open) | None => return Err(UNCLOSED),
                    }
                }
                nodes.push(Node::Subst { op, var, default });
            }
            other => nodes.push(Node::Text(tok_text(&other))),
        }
    }
    Ok(nodes)
}

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Text(s) | Tok::Var(s) | Tok::Close(s) | Tok::Op(_, s) => s.clone(),
        Tok::Open => "${".to_string(),
    }
}

/// envsubst's environment: the first pair with the name wins; a present name is "set" even if empty.
fn lookup<'e>(env: &[(&str, &'e str)], name: &str) -> Option<&'e str> {
    env.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn eval(node: &Node, env: &[(&str, &str)]) -> String {
    let value = |name: &str| lookup(env, name).unwrap_or("").to_string();
    match node {
        Node::Text(t) => t.clone(),
        Node::Var(name) => value(name),
        Node::Subst { op, var, default } => match (op, default) {
            (Some(Op::ColonDash | Op::ColonEquals), Some(d)) => {
                let v = value(var);
                if v.is_empty() { eval(d, env) } else { v }
            }
            (Some(Op::Plus | Op::ColonPlus), Some(d)) => {
                if lookup(env, var).is_some() {
                    eval(d, env)
                } else {
                    String::new()
                }
            }
            (Some(Op::Dash | Op::Equals), Some(d)) if lookup(env, var).is_none() => eval(d, env),
            _ => value(var),
        },
    }
}

/// envsubst without restrictions over the variables in `env`.
pub(crate) fn substitute(text: &str, env: &[(&str, &str)]) -> Result<String, &'static str> {
    let tokens = Lexer { input: text, pos: 0, start: 0, last: 0, depth: 0, out: Vec::new() }.run()?;
    Ok(parse(tokens)?.iter().map(|n| eval(n, env)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kmm() -> KernelVars {
        KernelVars::new("6.0.15-300.fc37.x86_64", "kmm-ci", "kmm-ns")
    }

    #[test]
    fn components_as_in_kmm_tests() {
        // KMM's replaceStrings_test.go.
        let vars = kmm().variables().expect("splits");
        let want = [
            ("KERNEL_FULL_VERSION", "6.0.15-300.fc37.x86_64"),
            ("KERNEL_VERSION", "6.0.15-300.fc37.x86_64"),
            ("KERNEL_XYZ", "6.0.15"),
            ("KERNEL_X", "6"),
            ("KERNEL_Y", "0"),
            ("KERNEL_Z", "15"),
            ("MOD_NAME", "kmm-ci"),
            ("MOD_NAMESPACE", "kmm-ns"),
        ];
        assert_eq!(vars.iter().map(|(n, v)| (*n, v.as_str())).collect::<Vec<_>>(), want);
    }

    #[test]
    fn debian_and_rhel_kernels() {
        let d = KernelComponents::parse("6.1.0-56-amd64").expect("debian");
        assert_eq!((d.xyz.as_str(), d.x.as_str(), d.y.as_str(), d.z.as_str()), ("6.1.0", "6", "1", "0"));
        let r = KernelComponents::parse("4.18.0-305.el8.x86_64").expect("rhel");
        assert_eq!((r.xyz.as_str(), r.x.as_str(), r.y.as_str(), r.z.as_str()), ("4.18.0", "4", "18", "0"));
        // No numeric check, as in KMM: the third field is whatever follows the second separator.
        assert_eq!(KernelComponents::parse("6.1-rc1").expect("rc").xyz, "6.1.rc1");
        // KMM splits at ',' too, but only after normalising, which has turned ',' into '_'.
        assert!(matches!(KernelComponents::parse("5,4,3"), Err(Error::KernelVersion { .. })));
    }

    #[test]
    fn kernels_that_do_not_split_are_refused_even_without_variables() {
        // KMM's test: kernel "test" is an error.
        for k in ["test", "6.1", "", "6"] {
            let e = KernelVars::kernel_only(k).expand("quay.io/org/img:latest").expect_err(k);
            assert!(matches!(&e, Error::KernelVersion { kernel } if kernel == k), "{k}: {e}");
        }
    }

    #[test]
    fn normalisation_as_in_kmm_tests() {
        // KMM's kernel_test.go.
        for (input, want) in [
            ("1.2.3-4", "1.2.3-4"),
            ("1.2.3+4", "1.2.3_4"),
            ("1.2.3_4", "1.2.3_4"),
            ("1.2.3&4", "1.2.3_4"),
            ("1.2.3%4", "1.2.3_4"),
            ("1.2.3?4", "1.2.3_4"),
            ("1.2.3 4", "1.2.3_4"),
        ] {
            assert_eq!(normalize(input), want);
        }
        let v = KernelVars::new("5.14.0+rt", "m", "n");
        assert_eq!(v.expand("img:${KERNEL_FULL_VERSION}").expect("expands"), "img:5.14.0_rt");
        // Build args keep the node's kernel.
        assert_eq!(v.build_args()["KERNEL_FULL_VERSION"], "5.14.0+rt");
    }

    #[test]
    fn both_syntaxes_as_in_kmm_tests() {
        // KMM's ReplaceInTemplates test, with KMM's variable names.
        let v = kmm();
        assert_eq!(v.expand("string with template $KERNEL_X").expect("x"), "string with template 6");
        assert_eq!(v.expand("string with template ${KERNEL_Y}").expect("y"), "string with template 0");
        assert_eq!(v.expand("string without template").expect("plain"), "string without template");
        assert_eq!(
            v.expand("quay.io/org/${MOD_NAMESPACE}-${MOD_NAME}:${KERNEL_XYZ}-$KERNEL_VERSION").expect("image"),
            "quay.io/org/kmm-ns-kmm-ci:6.0.15-6.0.15-300.fc37.x86_64"
        );
    }

    #[test]
    fn unknown_variables_become_empty() {
        let v = kmm();
        assert_eq!(v.expand("a${NOPE}b$NOPE/c").expect("unknown"), "ab/c");
        // `$KERNEL_XYZfoo` is one (unknown) name, as in the shell.
        assert_eq!(v.expand("x:$KERNEL_XYZfoo").expect("greedy"), "x:");
    }

    fn fake(text: &str) -> Result<String, &'static str> {
        // a8m/envsubst's own table (parse_test.go), relaxed mode.
        let env = [("BAR", "bar"), ("FOO", "foo"), ("EMPTY", ""), ("ALSO_EMPTY", "")];
        substitute(text, &env)
    }

    #[test]
    fn envsubst_relaxed_table() {
        let cases = [
            ("", ""),
            ("$BAR", "bar"),
            ("$BAR baz", "bar baz"),
            ("$BAR$FOO", "barfoo"),
            ("$BAR - $FOO", "bar - foo"),
            ("$_ bar", "$_ bar"),
            ("${_} bar", "${_} bar"),
            ("${BAR}baz", "barbaz"),
            ("${NOTSET-$BAR}", "bar"),
            ("${NOTSET=$BAR}", "bar"),
            ("${EMPTY-$BAR}", ""),
            ("${EMPTY=$BAR}", ""),
            ("${EMPTY:-$BAR}", "bar"),
            ("${EMPTY:=$BAR}", "bar"),
            ("${EMPTY+hello}", "hello"),
            ("${EMPTY:+hello}", "hello"),
            ("${NOTSET+hello}", ""),
            ("${NOTSET:+hello}", ""),
            ("hello $BAR\nhello ${EMPTY:=$FOO}", "hello bar\nhello foo"),
            ("${hello:=wo_rld} ${foo:=bar_baz}", "wo_rld bar_baz"),
            ("name: ${NAME:=foo_qux}, key: ${EMPTY:=baz_bar}", "name: foo_qux, key: baz_bar"),
            ("prop=${HOME_URL-http://localhost:8080}", "prop=http://localhost:8080"),
            ("${NOTSET}", ""),
            ("${EMPTY}", ""),
            ("$NOTSET", ""),
            ("${NOTSET:-$ALSO_NOTSET}", ""),
            ("${NOTSET+$ALSO_NOTSET}", ""),
            ("FOO $$BAR BAZ", "FOO $BAR BAZ"),
            ("FOO $${BAR} BAZ", "FOO ${BAR} BAZ"),
            ("$$$BAR", "$bar"),
            ("$$${BAZ:-baz}", "$baz"),
            // A `$` that starts nothing stays; so does an empty `${}`.
            ("cost: 5$ / $.x / ${}", "cost: 5$ / $.x / ${}"),
        ];
        for (input, want) in cases {
            assert_eq!(fake(input).as_deref(), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn unclosed_brace_is_the_only_error() {
        assert_eq!(fake("hello ${"), Err(UNCLOSED));
        assert_eq!(fake("${BAR"), Err(UNCLOSED));
        assert_eq!(fake("${BAR\n}"), Err(UNCLOSED));
        let e = kmm().expand("img:${KERNEL_XYZ").expect_err("unclosed");
        assert!(matches!(&e, Error::Template { template, .. } if template == "img:${KERNEL_XYZ"), "{e}");
        assert!(e.to_string().contains("closing brace expected"), "{e}");
    }

    #[test]
    fn build_args_are_kmms_four() {
        let args = KernelVars::new("6.1.0-56-amd64", "nvidia", "gpu").build_args();
        let want: BTreeMap<String, String> =
            [("KERNEL_FULL_VERSION", "6.1.0-56-amd64"), ("KERNEL_VERSION", "6.1.0-56-amd64"), ("MOD_NAME", "nvidia"), ("MOD_NAMESPACE", "gpu")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(args, want);
    }
}
