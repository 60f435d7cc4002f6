//! KMM's build secrets in a Dockerfile written for KMM: every `RUN` sees them as files.
//!
//! KMM (through Kaniko) mounts each Secret named in `build.secrets` as a directory
//! `/run/secrets/<secret>/` with one file per key, visible to every `RUN` without any flag. BuildKit
//! shows a secret only to a `RUN` that carries `--mount=type=secret`. So before a build with secrets
//! every `RUN` (in every stage) gets, for every secret id, `--mount=type=secret,id=<id>,target=/run/secrets/<id>`
//! right after the word `RUN`, on the instruction's own first line: the Dockerfile keeps its line
//! numbers, so BuildKit's errors still point at the user's lines.
//!
//! - An id `<secret>/<key>` (what the reconciler sends) lands at `/run/secrets/<secret>/<key>`, as in
//!   KMM; a plain id lands at `/run/secrets/<id>`, BuildKit's own default for it.
//! - A `RUN` that already mounts that id (`--mount=type=secret,id=<id>,…`, keys in any order) or
//!   already mounts something at that target keeps its own mount: user-written mounts work as before.
//! - The mounts are optional (BuildKit's default, `required=false`): the mount never fails a step.
//! - `ONBUILD RUN` is left alone: it runs in a later build of another Dockerfile, whose secrets this
//!   build does not know.
//!
//! The scanner follows BuildKit's Dockerfile parser where it matters here: the `# escape=` parser
//! directive (backslash or backtick), line continuations (comment and empty lines inside them are
//! skipped), heredocs of `RUN`/`COPY`/`ADD` (also under `ONBUILD`; their bodies are not instructions),
//! instruction names in any case after leading whitespace, and `RUN` in exec (JSON) form, where the
//! flags go before the array.

use crate::error::{Error, Result};

/// Where BuildKit mounts secrets by default, and where KMM mounts its Secrets.
const SECRETS_DIR: &str = "/run/secrets";

/// Checks that a build secret id can be mounted at `/run/secrets/<id>` and written into a `--mount`
/// flag unchanged.
pub(crate) fn validate_secret_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else if id.contains(',') {
        Some("it contains ',', which separates the fields of a --mount flag")
    } else if id.contains('=') {
        Some("it contains '=', which separates a --mount field's name from its value")
    } else if id.chars().any(|c| c.is_control() || matches!(c, '"' | '\'' | '\\' | '`')) {
        Some("it contains a quote, a backslash, a backtick or a control character")
    } else if id.starts_with('/') {
        Some("it is an absolute path; ids are <secret>/<key> or a plain name")
    } else if id.split('/').any(|s| s == "..") {
        Some("it has a '..' path segment, which would leave /run/secrets")
    } else if id.split('/').any(|s| s.is_empty() || s == ".") {
        Some("it has an empty or '.' path segment")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::SecretId { id: id.to_string(), reason }),
        None => Ok(()),
    }
}

/// The Dockerfile with every `RUN` mounting every secret in `ids` at `/run/secrets/<id>` (see the
/// module documentation); ids are validated first.
pub(crate) fn mount_secrets<'a>(dockerfile: &str, ids: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let ids: Vec<&str> = ids.into_iter().collect();
    for id in &ids {
        validate_secret_id(id)?;
    }
    if ids.is_empty() {
        return Ok(dockerfile.to_string());
    }
    let mut lines: Vec<String> = dockerfile.split_inclusive('\n').map(str::to_string).collect();
    for (line, at, ids_here) in run_instructions(dockerfile, &ids) {
        let text = &mut lines[line];
        let mut flags: String = ids_here.iter().map(|id| format!(" --mount=type=secret,id={id},target={SECRETS_DIR}/{id}")).collect();
        // `RUN\` or `RUN` at the end of the line: keep the flags apart from what follows.
        if !text[at..].starts_with([' ', '\t']) {
            flags.push(' ');
        }
        text.insert_str(at, &flags);
    }
    Ok(lines.concat())
}

/// For each `RUN` instruction that lacks some of `ids`: its first physical line (0-based), the byte
/// offset in that line just after the word `RUN`, and the ids to add.
fn run_instructions<'a>(dockerfile: &str, ids: &[&'a str]) -> Vec<(usize, usize, Vec<&'a str>)> {
    let lines: Vec<&str> = dockerfile.split_inclusive('\n').collect();
    let mut directives = Directives::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        // BuildKit drops a byte-order mark on the first line.
        let bom = if i == 0 && raw.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
        let line = strip_newline(&raw[bom..]);
        let trimmed = line.trim_start();
        let indent = bom + line.len() - trimmed.len();
        directives.see(trimmed);
        i += 1;
        if trimmed.starts_with('#') {
            continue;
        }
        let (first, mut ended) = directives.trim_continuation(trimmed);
        if ended && first.is_empty() {
            continue;
        }
        let start = i - 1;
        let mut logical = first.to_string();
        while !ended && i < lines.len() {
            let next = strip_newline(lines[i]);
            directives.see(next);
            i += 1;
            let next_trimmed = next.trim_start();
            if next_trimmed.starts_with('#') || next_trimmed.is_empty() {
                continue;
            }
            let (part, end) = directives.trim_continuation(next);
            logical.push_str(part);
            ended = end;
        }

        let (word, rest) = split_word(&logical);
        let word = word.to_ascii_lowercase();
        // ONBUILD's heredocs belong to the instruction it wraps.
        let (inner, inner_rest) = if word == "onbuild" {
            let (w, r) = split_word(rest);
            (w.to_ascii_lowercase(), r)
        } else {
            (word.clone(), rest)
        };
        if matches!(inner.as_str(), "run" | "copy" | "add") && !is_exec_form(inner_rest) && logical.contains("<<") {
            for terminator in heredocs(&logical) {
                // The body, up to its terminator line, is not Dockerfile.
                while i < lines.len() {
                    let body = strip_newline(lines[i]);
                    i += 1;
                    let candidate = if terminator.chomp { body.trim_start_matches('\t') } else { body };
                    if candidate == terminator.name {
                        break;
                    }
                }
            }
        }

        if word == "run" {
            // The keyword must sit whole on the instruction's first line to insert after it there.
            let keyword_here = trimmed.get(..3).is_some_and(|k| k.eq_ignore_ascii_case("run"))
                && trimmed[3..].chars().next().is_none_or(|c| c.is_whitespace() || c == directives.escape);
            if !keyword_here {
                continue;
            }
            let mounts = existing_mounts(rest);
            let missing: Vec<&str> = ids.iter().copied().filter(|id| !mounts.iter().any(|m| m.covers(id))).collect();
            if !missing.is_empty() {
                out.push((start, indent + 3, missing));
            }
        }
    }
    out
}

/// The line without its `\n` or `\r\n`.
fn strip_newline(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// The first word (up to BuildKit's whitespace) and the rest.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_blank);
    match s.find(is_blank) {
        Some(at) => (&s[..at], s[at..].trim_start_matches(is_blank)),
        None => (s, ""),
    }
}

/// BuildKit's separator between an instruction and its arguments.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r')
}

/// Parser directives and what they set.
struct Directives {
    escape: char,
    done: bool,
}

impl Directives {
    fn new() -> Self {
        Directives { escape: '\\', done: false }
    }

    /// A line read while parser directives may still come: `# escape=` sets the escape character;
    /// anything but a known directive ends them.
    fn see(&mut self, line: &str) {
        if self.done {
            return;
        }
        let directive = line.trim_start().strip_prefix('#').and_then(|d| {
            let (name, value) = d.split_once('=')?;
            let name = name.trim();
            let value = value.trim();
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && name.chars().all(|c| c.is_ascii_alphanumeric()) && !value.is_empty();
            valid.then(|| (name.to_ascii_lowercase(), value))
        });
        match directive {
            Some((name, value)) if name == "escape" => match value {
                "`" => self.escape = '`',
                "\\" => self.escape = '\\',
                // BuildKit refuses the Dockerfile; nothing to rewrite reliably.
                _ => {}
            },
            Some((name, _)) if matches!(name.as_str(), "syntax" | "check") => {}
            _ => self.done = true,
        }
    }

    /// The line without a trailing escape character (and blanks after it), and whether the
    /// instruction ends here.
    fn trim_continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let body = line.trim_end_matches([' ', '\t']);
        match body.strip_suffix(self.escape) {
            Some(rest) => (rest, false),
            None => (line, true),
        }
    }
}

/// Whether an instruction's arguments (after the flags) are a JSON array of strings.
fn is_exec_form(args: &str) -> bool {
    let args = skip_flags(args).trim();
    args.starts_with('[') && serde_json::from_str::<Vec<String>>(args).is_ok()
}

/// A heredoc an instruction opens: `<<NAME`, `<<-NAME` (leading tabs of the terminator ignored).
struct Heredoc {
    name: String,
    chomp: bool,
}

/// The heredocs a logical line opens, in order: its shell words (quotes kept) of the form
/// `[fd]<<[-]NAME`, with NAME unquoted.
fn heredocs(line: &str) -> Vec<Heredoc> {
    shell_words(line)
        .into_iter()
        .filter_map(|word| {
            let rest = word.trim_start_matches(|c: char| c.is_ascii_digit()).strip_prefix("<<")?;
            let (chomp, rest) = match rest.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            if rest.is_empty() || rest.contains('<') {
                return None;
            }
            let name: String = unquote(rest);
            (!name.is_empty()).then_some(Heredoc { name, chomp })
        })
        .collect()
}

/// Words split at blanks outside quotes; quotes and backslashes are kept.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if is_blank(c) => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// A shell word with its quotes and escaping backslashes removed.
fn unquote(word: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => out.push(c),
            (_, '\\') => out.extend(chars.next()),
            (_, c) => out.push(c),
        }
    }
    out
}

/// The instruction's arguments after its leading `--flag` words.
fn skip_flags(args: &str) -> &str {
    let mut rest = args.trim_start_matches(is_blank);
    while rest.starts_with("--") {
        let (_, after) = flag_word(rest);
        rest = after.trim_start_matches(is_blank);
    }
    rest
}

/// The first flag word (quotes removed) and what follows it.
fn flag_word(s: &str) -> (String, &str) {
    let mut word = String::new();
    let mut quote = None;
    let mut iter = s.char_indices();
    while let Some((at, c)) = iter.next() {
        match (quote, c) {
            (None, c) if is_blank(c) => return (word, &s[at..]),
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                if let Some((_, next)) = iter.next() {
                    word.push(next);
                }
            }
            (_, c) => word.push(c),
        }
    }
    (word, "")
}

/// A `--mount` a `RUN` already has: its type, the secret id it names and where it mounts.
#[derive(Debug, Default)]
struct Mount {
    secret: bool,
    id: Option<String>,
    target: Option<String>,
}

impl Mount {
    /// Whether this mount already gives the RUN secret `id`, or takes its target.
    fn covers(&self, id: &str) -> bool {
        let ours = format!("{SECRETS_DIR}/{id}");
        let secret_id = if self.secret { self.id.clone().or_else(|| self.target.as_deref().map(|t| basename(t).to_string())) } else { None };
        let target = match (&self.target, &secret_id) {
            (Some(t), _) => Some(t.trim_end_matches('/').to_string()),
            // BuildKit's default target for a secret: /run/secrets/ and the id's last segment.
            (None, Some(sid)) => Some(format!("{SECRETS_DIR}/{}", basename(sid))),
            (None, None) => None,
        };
        secret_id.as_deref() == Some(id) || target.as_deref() == Some(ours.as_str())
    }
}

fn basename(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path)
}

/// The `--mount` flags before a `RUN`'s command.
fn existing_mounts(args: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    let mut rest = args.trim_start_matches(is_blank);
    while rest.starts_with("--") {
        let (word, after) = flag_word(rest);
        rest = after.trim_start_matches(is_blank);
        let Some(value) = word.strip_prefix("--mount=") else { continue };
        let mut mount = Mount::default();
        for field in value.split(',') {
            let (key, val) = field.split_once('=').unwrap_or((field, ""));
            match key.trim().to_ascii_lowercase().as_str() {
                "type" => mount.secret = val.trim() == "secret",
                // For a secret, `source` names the id too (and wins, as in BuildKit).
                "source" | "src" => mount.id = Some(val.trim().to_string()),
                "id" if mount.id.is_none() => mount.id = Some(val.trim().to_string()),
                "target" | "dst" | "destination" => mount.target = Some(val.trim().to_string()),
                _ => {}
            }
        }
        mounts.push(mount);
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(id: &str) -> String {
        format!("--mount=type=secret,id={id},target=/run/secrets/{id}")
    }

    fn rewrite(dockerfile: &str, ids: &[&str]) -> String {
        mount_secrets(dockerfile, ids.iter().copied()).expect("rewrites")
    }

    #[test]
    fn every_run_gets_every_secret_and_other_lines_stay() {
        let s = mount("mysecret/token");
        let p = mount("plain");
        let cases: Vec<(&str, String, String)> = vec![
            ("simple RUN", "FROM a\nRUN make\n".into(), format!("FROM a\nRUN {s} {p} make\n")),
            ("lowercase and indented", "FROM a\n  run make\n\trUn true\n".into(), format!("FROM a\n  run {s} {p} make\n\trUn {s} {p} true\n")),
            (
                "continuation lines, a comment and an empty line inside",
                "FROM a\nRUN make \\\n# a comment\n\n    && make install\nRUN true\n".into(),
                format!("FROM a\nRUN {s} {p} make \\\n# a comment\n\n    && make install\nRUN {s} {p} true\n"),
            ),
            (
                "a continuation line that starts with RUN is not an instruction",
                "FROM a\nENV X=1 \\\nRUN=2\nRUN echo \\\n  RUN\n".into(),
                format!("FROM a\nENV X=1 \\\nRUN=2\nRUN {s} {p} echo \\\n  RUN\n"),
            ),
            (
                "the keyword alone before a continuation",
                "FROM a\nRUN \\\n  make\nRUN\\\n  make\n".into(),
                format!("FROM a\nRUN {s} {p} \\\n  make\nRUN {s} {p} \\\n  make\n"),
            ),
            (
                "backtick escape directive",
                "# escape=`\nFROM a\nRUN dir c:\\ `\n  && echo done\nRUN echo \\\nCOPY x y\n".into(),
                format!("# escape=`\nFROM a\nRUN {s} {p} dir c:\\ `\n  && echo done\nRUN {s} {p} echo \\\nCOPY x y\n"),
            ),
            (
                "a directive after a comment is only a comment",
                "# hello\n# escape=`\nFROM a\nRUN echo `\nRUN true\n".into(),
                format!("# hello\n# escape=`\nFROM a\nRUN {s} {p} echo `\nRUN {s} {p} true\n"),
            ),
            (
                "heredoc body with RUN lines is not touched",
                "FROM a\nRUN <<EOF\nRUN this is shell\nrun too\nEOF\nRUN true\n".into(),
                format!("FROM a\nRUN {s} {p} <<EOF\nRUN this is shell\nrun too\nEOF\nRUN {s} {p} true\n"),
            ),
            (
                "quoted, chomped and several heredocs; COPY heredocs too",
                "FROM a\nRUN <<-\"END\" bash\n\tRUN x\n\tEND\nCOPY <<A <<'B' /dst/\nRUN a\nA\nRUN b\nB\nRUN cat <<X > /f && cat 2<<Y\nRUN x\nX\nRUN y\nY\nRUN true\n"
                    .into(),
                format!(
                    "FROM a\nRUN {s} {p} <<-\"END\" bash\n\tRUN x\n\tEND\nCOPY <<A <<'B' /dst/\nRUN a\nA\nRUN b\nB\nRUN {s} {p} cat <<X > /f && cat 2<<Y\nRUN x\nX\nRUN y\nY\nRUN {s} {p} true\n"
                ),
            ),
            (
                "a quoted << is no heredoc",
                "FROM a\nRUN echo \"<<EOF\"\nRUN true\n".into(),
                format!("FROM a\nRUN {s} {p} echo \"<<EOF\"\nRUN {s} {p} true\n"),
            ),
            (
                "exec form: the flags go before the array",
                "FROM a\nRUN [\"sh\", \"-c\", \"cat <<EOF\"]\nRUN true\n".into(),
                format!("FROM a\nRUN {s} {p} [\"sh\", \"-c\", \"cat <<EOF\"]\nRUN {s} {p} true\n"),
            ),
            (
                "an existing mount of the same id, keys in any order, is kept and not repeated",
                "FROM a\nRUN --mount=target=/tok,required=true,id=mysecret/token,type=secret cat /tok\nRUN --mount=type=secret,id=plain make\n".into(),
                format!(
                    "FROM a\nRUN {p} --mount=target=/tok,required=true,id=mysecret/token,type=secret cat /tok\nRUN {s} --mount=type=secret,id=plain make\n"
                ),
            ),
            (
                "a mount already at the target is kept",
                "FROM a\nRUN --mount=type=secret,id=other,target=/run/secrets/plain --network=none make\n".into(),
                format!("FROM a\nRUN {s} --mount=type=secret,id=other,target=/run/secrets/plain --network=none make\n"),
            ),
            (
                "a secret named by source, and one whose default target is ours",
                "FROM a\nRUN --mount=type=secret,source=plain x\nRUN --mount=type=secret,id=other/plain y\n".into(),
                format!("FROM a\nRUN {s} --mount=type=secret,source=plain x\nRUN {s} --mount=type=secret,id=other/plain y\n"),
            ),
            (
                "multiple stages",
                "FROM a AS build\nRUN make\nFROM b\nCOPY --from=build /x /x\nRUN depmod\n".into(),
                format!("FROM a AS build\nRUN {s} {p} make\nFROM b\nCOPY --from=build /x /x\nRUN {s} {p} depmod\n"),
            ),
            (
                "ONBUILD RUN is untouched, and so is its heredoc",
                "FROM a\nONBUILD RUN make\nONBUILD RUN <<EOF\nRUN x\nEOF\nRUN true\n".into(),
                format!("FROM a\nONBUILD RUN make\nONBUILD RUN <<EOF\nRUN x\nEOF\nRUN {s} {p} true\n"),
            ),
            (
                "comments, words that start with run, CRLF and a byte-order mark",
                "\u{feff}RUN x\r\n# RUN not this\r\n  # nor RUN this\r\nFROM a\r\nRUNNER x\r\nRUN true\r\n".into(),
                format!("\u{feff}RUN {s} {p} x\r\n# RUN not this\r\n  # nor RUN this\r\nFROM a\r\nRUNNER x\r\nRUN {s} {p} true\r\n"),
            ),
            ("no trailing newline", "FROM a\nRUN true".into(), format!("FROM a\nRUN {s} {p} true")),
        ];
        for (name, input, want) in cases {
            let got = rewrite(&input, &["mysecret/token", "plain"]);
            assert_eq!(got, want, "{name}");
            assert_eq!(got.lines().count(), input.lines().count(), "{name}: the line numbers stay");
        }
    }

    #[test]
    fn no_secrets_no_change() {
        let d = "FROM a\nRUN make\n";
        assert_eq!(rewrite(d, &[]), d);
        assert_eq!(rewrite(d, &["x"]), format!("FROM a\nRUN {} make\n", mount("x")));
    }

    #[test]
    fn invalid_ids_are_refused_naming_the_id_and_why() {
        for (id, why) in [
            ("", "empty"),
            ("my secret", "whitespace"),
            ("a,b", "','"),
            ("a=b", "'='"),
            ("../etc", "'..'"),
            ("s/../../x", "'..'"),
            ("/etc/passwd", "absolute"),
            ("s//k", "empty or '.'"),
            ("s/", "empty or '.'"),
            ("s\"k", "quote"),
        ] {
            let e = mount_secrets("FROM a\nRUN x\n", [id]).expect_err(id).to_string();
            assert!(e.contains(&format!("{id:?}")) && e.contains(why), "{id:?}: {e}");
        }
        for id in ["token", "my-secret/key.pem", "s.example/k_1", "..hidden"] {
            validate_secret_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }
}
