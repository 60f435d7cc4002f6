//! Checks kforge's text of BuildKit's API (`proto/buildkit/`) against BuildKit's own .proto files.
//!
//! The upstream files come from Go's module cache: `github.com/moby/buildkit` at the version pinned
//! in `tests/peers/versions.env`, and the modules it imports at the versions that the wrapper module
//! `tests/peers/buildkit/` resolves. Every message, field, enum value, service and method that kforge
//! defines must be there upstream with the same name, number, type, label and streaming; kforge may
//! leave out what it does not use. Needs Go 1.26+ and the Go module proxy (as `tests/peers/build.sh`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use protox::Compiler;
use protox::file::{File, FileResolver, GoogleFileResolver};
use protox::prost_reflect::{Cardinality, DescriptorPool, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, Syntax};

/// Each kforge file under `proto/buildkit/` and the upstream file (by import path) it follows.
const FILES: [(&str, &str); 5] = [
    ("pb/ops.proto", "github.com/moby/buildkit/solver/pb/ops.proto"),
    ("moby/buildkit/v1/types/worker.proto", "github.com/moby/buildkit/api/types/worker.proto"),
    ("moby/buildkit/v1/control.proto", "github.com/moby/buildkit/api/services/control/control.proto"),
    ("moby/filesync/v1/auth.proto", "github.com/moby/buildkit/session/auth/auth.proto"),
    ("moby/buildkit/secrets/v1/secrets.proto", "github.com/moby/buildkit/session/secrets/secrets.proto"),
];

/// BuildKit's Go module.
const BUILDKIT: &str = "github.com/moby/buildkit";

/// The Go module with googleapis' `google/rpc` types (which ships their descriptors, not .proto text).
const GENPROTO_RPC: &str = "google.golang.org/genproto/googleapis/rpc";

/// What to do when Go or the module proxy is missing.
const PREREQUISITES: &str = "this test reads BuildKit's .proto files from Go's module cache: \
    install Go 1.26+ and let it reach the Go module proxy, as tests/peers/build.sh needs, then run \
    tests/peers/build.sh (it fetches the same modules)";

#[test]
fn buildkit_subset_matches_upstream() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let version = buildkit_version(&root.join("tests/peers/versions.env"));
    let upstream_files = UpstreamFiles::new(root.join("tests/peers/buildkit"), &version);

    let kforge_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("buildkit");
    let mut on_disk = Vec::new();
    proto_files(&kforge_dir, &kforge_dir, &mut on_disk);
    let unmapped: Vec<_> = on_disk.iter().filter(|f| !FILES.iter().any(|(k, _)| k == f)).collect();
    assert!(unmapped.is_empty(), "proto/buildkit/ files with no upstream file in FILES: {unmapped:?}");

    let kforge = Compiler::new([&kforge_dir])
        .expect("include proto/buildkit")
        .open_files(FILES.map(|(k, _)| k))
        .unwrap_or_else(|e| panic!("compiling proto/buildkit/: {e:?}"))
        .descriptor_pool();
    let upstream = Compiler::with_file_resolver(upstream_files)
        .open_files(FILES.map(|(_, u)| u))
        .unwrap_or_else(|e| panic!("compiling BuildKit {version}'s .proto files: {e:?}"))
        .descriptor_pool();

    let mismatches = compare(&kforge, &upstream, &FILES);
    assert!(
        mismatches.is_empty(),
        "proto/buildkit/ differs from BuildKit {version} in {} place(s):\n  {}\nfix kforge's files \
         (numbers and types as upstream has them, comments in kforge's own words)",
        mismatches.len(),
        mismatches.join("\n  ")
    );
}

/// Every difference between what kforge defines and upstream, one readable line each.
fn compare(kforge: &DescriptorPool, upstream: &DescriptorPool, files: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, u) in files {
        let kfile = kforge.get_file_by_name(k).unwrap_or_else(|| panic!("kforge has no file {k}"));
        let ufile = upstream.get_file_by_name(u).unwrap_or_else(|| panic!("upstream has no file {u}"));
        if kfile.package_name() != ufile.package_name() {
            out.push(format!("{k}: package: kforge says {}, upstream ({u}) says {}", kfile.package_name(), ufile.package_name()));
        }
        compare_file(&kfile, upstream, &mut out);
    }
    out
}

/// Compares the messages, enums and services of one kforge file with upstream's definitions.
fn compare_file(kfile: &FileDescriptor, upstream: &DescriptorPool, out: &mut Vec<String>) {
    let mut messages: Vec<MessageDescriptor> = kfile.messages().collect();
    let mut enums: Vec<EnumDescriptor> = kfile.enums().collect();
    while let Some(k) = messages.pop() {
        messages.extend(k.child_messages().filter(|m| !m.is_map_entry()));
        enums.extend(k.child_enums());
        match upstream.get_message_by_name(k.full_name()) {
            Some(u) => compare_message(&k, &u, out),
            None => out.push(format!("{}: message not upstream", k.full_name())),
        }
    }
    for k in enums {
        let Some(u) = upstream.get_enum_by_name(k.full_name()) else {
            out.push(format!("{}: enum not upstream", k.full_name()));
            continue;
        };
        for kv in k.values() {
            let at = format!("{}.{}", k.full_name(), kv.name());
            match u.get_value_by_name(kv.name()) {
                Some(uv) if uv.number() != kv.number() => out.push(format!("{at}: number: kforge says {}, upstream says {}", kv.number(), uv.number())),
                Some(_) => {}
                None => out.push(format!("{at}: enum value not upstream")),
            }
        }
    }
    for k in kfile.services() {
        let Some(u) = upstream.get_service_by_name(k.full_name()) else {
            out.push(format!("{}: service not upstream", k.full_name()));
            continue;
        };
        for km in k.methods() {
            let Some(um) = u.methods().find(|m| m.name() == km.name()) else {
                out.push(format!("{}: method not upstream", km.full_name()));
                continue;
            };
            let facts = [
                ("input", km.input().full_name().to_owned(), um.input().full_name().to_owned()),
                ("output", km.output().full_name().to_owned(), um.output().full_name().to_owned()),
                ("client streaming", km.is_client_streaming().to_string(), um.is_client_streaming().to_string()),
                ("server streaming", km.is_server_streaming().to_string(), um.is_server_streaming().to_string()),
            ];
            differences(km.full_name(), &facts, out);
        }
    }
}

/// Compares each field kforge defines with upstream's field of the same name (or else number).
fn compare_message(k: &MessageDescriptor, u: &MessageDescriptor, out: &mut Vec<String>) {
    for kf in k.fields() {
        let at = format!("{} (field {})", kf.full_name(), kf.number());
        let Some(uf) = u.get_field_by_name(kf.name()).or_else(|| u.get_field(kf.number())) else {
            out.push(format!("{at}: not upstream (no field of that name or number)"));
            continue;
        };
        let facts = [
            ("name", kf.name().to_owned(), uf.name().to_owned()),
            ("number", kf.number().to_string(), uf.number().to_string()),
            ("type", type_name(&kf), type_name(&uf)),
            ("label", label(&kf), label(&uf)),
            ("oneof", oneof(&kf), oneof(&uf)),
            ("packed", packed(&kf).to_string(), packed(&uf).to_string()),
        ];
        differences(&at, &facts, out);
    }
}

/// Pushes one line per fact whose kforge and upstream values differ.
fn differences(at: &str, facts: &[(&str, String, String)], out: &mut Vec<String>) {
    for (what, k, u) in facts {
        if k != u {
            out.push(format!("{at}: {what}: kforge says {k}, upstream says {u}"));
        }
    }
}

/// `string`, `.pb.Definition`-style full names for messages and enums, `map<K, V>` for maps.
fn type_name(f: &FieldDescriptor) -> String {
    match f.kind() {
        Kind::Message(m) if f.is_map() => format!("map<{}, {}>", type_name(&m.map_entry_key_field()), type_name(&m.map_entry_value_field())),
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        scalar => format!("{scalar:?}").to_lowercase(),
    }
}

/// `repeated`, `required`, `optional` (explicit presence) or `singular` (proto3, implicit presence).
fn label(f: &FieldDescriptor) -> String {
    let explicit = f.field_descriptor_proto().proto3_optional() || f.parent_file().syntax() == Syntax::Proto2;
    match f.cardinality() {
        Cardinality::Repeated => "repeated",
        Cardinality::Required => "required",
        Cardinality::Optional if explicit => "optional",
        Cardinality::Optional => "singular",
    }
    .to_owned()
}

/// Whether a repeated scalar is packed (from the options: `is_packed` misses `[packed = false]`).
fn packed(f: &FieldDescriptor) -> bool {
    let packable = !matches!(f.kind(), Kind::String | Kind::Bytes | Kind::Message(_));
    let default = f.parent_file().syntax() == Syntax::Proto3;
    let options = f.field_descriptor_proto().options.as_ref();
    f.is_list() && packable && options.and_then(|o| o.packed).unwrap_or(default)
}

/// The (written, not synthetic) oneof the field belongs to, or `none`.
fn oneof(f: &FieldDescriptor) -> String {
    match f.containing_oneof() {
        Some(o) if !o.is_synthetic() => o.name().to_owned(),
        _ => "none".to_owned(),
    }
}

/// `BUILDKIT_VERSION` from `versions.env`.
fn buildkit_version(env: &Path) -> String {
    let text = std::fs::read_to_string(env).unwrap_or_else(|e| panic!("reading {}: {e}", env.display()));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("BUILDKIT_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("{} pins no BUILDKIT_VERSION", env.display()))
}

/// The `.proto` files under `dir`, as names relative to `base`, sorted.
fn proto_files(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())).path();
        if path.is_dir() {
            proto_files(base, &path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let name = path.strip_prefix(base).expect("under base").to_string_lossy();
            out.push(name.replace(std::path::MAIN_SEPARATOR, "/"));
        }
    }
    out.sort();
}

/// Runs `go ARGS` in `dir`: its trimmed stdout, or its stderr when it fails.
fn go(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = match Command::new("go").args(args).current_dir(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("`go` is not on PATH: {PREREQUISITES}"),
        Err(e) => panic!("running go {}: {e}", args.join(" ")),
    };
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!("go {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Finds upstream's import paths in Go's module cache, through the wrapper module.
struct UpstreamFiles {
    /// `tests/peers/buildkit/`, where `go` resolves module versions.
    wrapper: PathBuf,
    /// Module path to its directory in the module cache; BuildKit's at the pinned version.
    modules: RefCell<BTreeMap<String, PathBuf>>,
    /// `google/protobuf/*.proto`, the well-known types protox carries.
    google: GoogleFileResolver,
}

impl UpstreamFiles {
    /// Downloads BuildKit at `version` (if needed) and checks that the wrapper resolves the same.
    fn new(wrapper: PathBuf, version: &str) -> Self {
        let pinned = format!("{BUILDKIT}@{version}");
        if let Err(e) = go(&wrapper, &["mod", "download", &pinned]) {
            panic!("cannot download {pinned}: {e}\n{PREREQUISITES}");
        }
        let dir = go(&wrapper, &["list", "-m", "-f", "{{.Dir}}", &pinned]).unwrap_or_else(|e| panic!("cannot locate {pinned}: {e}"));
        let resolved =
            go(&wrapper, &["list", "-m", "-f", "{{.Version}}", BUILDKIT]).unwrap_or_else(|e| panic!("tests/peers/buildkit/ does not resolve {BUILDKIT}: {e}"));
        assert_eq!(
            resolved, version,
            "tests/peers/buildkit/go.mod requires {BUILDKIT} {resolved} but versions.env pins \
             {version}: run tests/peers/build.sh --regenerate"
        );
        let modules = BTreeMap::from([(BUILDKIT.to_owned(), PathBuf::from(dir))]);
        UpstreamFiles { wrapper, modules: RefCell::new(modules), google: GoogleFileResolver::new() }
    }

    /// The directory of `module` at the version the wrapper resolves, downloaded if needed.
    fn module_dir(&self, module: &str) -> Result<PathBuf, String> {
        if let Some(dir) = self.modules.borrow().get(module) {
            return Ok(dir.clone());
        }
        let mut dir = go(&self.wrapper, &["list", "-m", "-f", "{{.Dir}}", module])?;
        if dir.is_empty() {
            go(&self.wrapper, &["mod", "download", module])?;
            dir = go(&self.wrapper, &["list", "-m", "-f", "{{.Dir}}", module])?;
        }
        self.modules.borrow_mut().insert(module.to_owned(), PathBuf::from(&dir));
        Ok(PathBuf::from(dir))
    }

    /// The file an import path names: the longest prefix that is a module, then the path inside it.
    fn locate(&self, import: &str) -> Result<PathBuf, String> {
        let parts: Vec<&str> = import.split('/').collect();
        let mut errors = Vec::new();
        if parts[0].contains('.') {
            for n in (2..parts.len()).rev() {
                // A prefix that is no module of the build fails: try the next shorter one.
                match self.module_dir(&parts[..n].join("/")) {
                    Ok(dir) => return Ok(dir.join(parts[n..].join("/"))),
                    Err(e) => errors.push(e),
                }
            }
        }
        Err(format!("no module of tests/peers/buildkit/ holds {import}: {}", errors.join("; ")))
    }
}

impl FileResolver for UpstreamFiles {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name.starts_with("google/protobuf/") {
            return self.google.open_file(name);
        }
        if name.starts_with("google/rpc/") {
            // googleapis is no Go module: read the descriptor compiled into Go's genproto module.
            let dir = self.module_dir(GENPROTO_RPC).map_err(protox::Error::new)?;
            let bytes = go_embedded_descriptor(&dir, name).map_err(protox::Error::new)?;
            return File::decode_file_descriptor_proto(bytes.as_slice()).map_err(protox::Error::new);
        }
        File::open(name, &self.locate(name).map_err(protox::Error::new)?)
    }
}

/// The serialized descriptor of `proto` that protoc-gen-go compiled into a `.pb.go` under `dir`.
fn go_embedded_descriptor(dir: &Path, proto: &str) -> Result<Vec<u8>, String> {
    let source_line = format!("// source: {proto}\n");
    let ident: String = proto.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let var = format!("file_{ident}_rawDesc = ");
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("listing {}: {e}", d.display()))?;
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if !path.to_string_lossy().ends_with(".pb.go") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            if !text.contains(&source_line) {
                continue;
            }
            let start = text.find(&var).ok_or_else(|| format!("{}: no {var}", path.display()))?;
            return parse_go_bytes(&text[start + var.len()..]).ok_or_else(|| format!("{}: cannot read {var}", path.display()));
        }
    }
    Err(format!("no .pb.go under {} was generated from {proto}", dir.display()))
}

/// Reads a Go `[]byte{0x0a, …}` literal or a `"" + "\n" + "…"` string constant from its start.
fn parse_go_bytes(text: &str) -> Option<Vec<u8>> {
    if let Some(body) = text.strip_prefix("[]byte{") {
        let body = &body[..body.find('}')?];
        return body.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| u8::from_str_radix(t.strip_prefix("0x")?, 16).ok()).collect();
    }
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let (literal, more) = match line.strip_suffix('+') {
            Some(l) => (l.trim_end(), true),
            None => (line, false),
        };
        unquote_go(literal, &mut out)?;
        if !more {
            return Some(out);
        }
    }
    None
}

/// Appends the bytes of one interpreted Go string literal (`"…"` with Go's escapes).
fn unquote_go(literal: &str, out: &mut Vec<u8>) -> Option<()> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<u32> {
            let digits: String = chars.by_ref().take(n).collect();
            (digits.len() == n).then(|| u32::from_str_radix(&digits, 16).ok()).flatten()
        };
        match chars.next()? {
            'a' => out.push(0x07),
            'b' => out.push(0x08),
            'f' => out.push(0x0c),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(0x0b),
            '\\' => out.push(b'\\'),
            '"' => out.push(b'"'),
            '\'' => out.push(b'\''),
            'x' => out.push(u8::try_from(hex(&mut chars, 2)?).ok()?),
            u @ ('u' | 'U') => {
                let c = char::from_u32(hex(&mut chars, if u == 'u' { 4 } else { 8 })?)?;
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            d @ '0'..='7' => {
                let rest: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&format!("{d}{rest}"), 8).ok()?);
            }
            _ => return None,
        }
    }
    Some(())
}

/// Proto files held in memory, for the tests of `compare`.
struct Sources(Vec<(&'static str, &'static str)>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.iter().find(|(n, _)| *n == name) {
            Some((n, source)) => File::from_source(n, source),
            None => GoogleFileResolver::new().open_file(name),
        }
    }
}

/// Compiles `name` from the given in-memory files.
fn pool(files: Vec<(&'static str, &'static str)>, name: &str) -> DescriptorPool {
    Compiler::with_file_resolver(Sources(files)).open_file(name).unwrap_or_else(|e| panic!("compiling {name}: {e:?}")).descriptor_pool()
}

/// A small "upstream" file that the tests below vary.
const SMALL_UPSTREAM: &str = r#"
syntax = "proto3";
package t;
message M {
  string a = 1;
  int64 b = 2;
  map<string, N> c = 3;
  repeated int64 d = 4;
  optional string e = 5;
  oneof o { string f = 6; N g = 7; }
  string only_upstream = 8;
  message N { bool h = 1; }
}
enum E { E_ZERO = 0; E_ONE = 1; }
service S { rpc Call(M) returns (stream M); }
"#;

#[test]
fn compare_accepts_a_subset() {
    let subset = r#"
syntax = "proto3";
package t;
message M {
  string a = 1;
  map<string, N> c = 3;
  optional string e = 5;
  oneof o { N g = 7; }
  message N { bool h = 1; }
}
enum E { E_ZERO = 0; E_ONE = 1; }
service S { rpc Call(M) returns (stream M); }
"#;
    let kforge = pool(vec![("k.proto", subset)], "k.proto");
    let upstream = pool(vec![("u.proto", SMALL_UPSTREAM)], "u.proto");
    assert_eq!(compare(&kforge, &upstream, &[("k.proto", "u.proto")]), Vec::<String>::new());
}

#[test]
fn compare_reports_every_difference() {
    let changed = r#"
syntax = "proto3";
package t;
message M {
  string a = 9;
  string b = 2;
  map<string, string> c = 3;
  repeated int64 d = 4 [packed = false];
  string e = 5;
  N g = 7;
  string renamed = 8;
  string invented = 10;
  message N { bool h = 1; }
  message Nested {}
}
message Invented {}
enum E { E_ZERO = 0; E_ONE = 2; E_TWO = 3; }
enum F { F_ZERO = 0; }
service S { rpc Call(stream M) returns (M); rpc Gone(M) returns (M); }
service T {}
"#;
    let kforge = pool(vec![("k.proto", changed)], "k.proto");
    let upstream = pool(vec![("u.proto", SMALL_UPSTREAM)], "u.proto");
    let mut got = compare(&kforge, &upstream, &[("k.proto", "u.proto")]);
    got.sort();
    let mut want = vec![
        "t.M.a (field 9): number: kforge says 9, upstream says 1",
        "t.M.b (field 2): type: kforge says string, upstream says int64",
        "t.M.c (field 3): type: kforge says map<string, string>, upstream says map<string, t.M.N>",
        "t.M.d (field 4): packed: kforge says false, upstream says true",
        "t.M.e (field 5): label: kforge says singular, upstream says optional",
        "t.M.g (field 7): oneof: kforge says none, upstream says o",
        "t.M.renamed (field 8): name: kforge says renamed, upstream says only_upstream",
        "t.M.invented (field 10): not upstream (no field of that name or number)",
        "t.M.Nested: message not upstream",
        "t.Invented: message not upstream",
        "t.E.E_ONE: number: kforge says 2, upstream says 1",
        "t.E.E_TWO: enum value not upstream",
        "t.F: enum not upstream",
        "t.S.Gone: method not upstream",
        "t.T: service not upstream",
        "t.S.Call: client streaming: kforge says true, upstream says false",
        "t.S.Call: server streaming: kforge says false, upstream says true",
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn compare_reports_a_package_difference() {
    let other = "syntax = \"proto3\";\npackage other;\nmessage M { string a = 1; }\n";
    let kforge = pool(vec![("k.proto", other)], "k.proto");
    let upstream = pool(vec![("u.proto", SMALL_UPSTREAM)], "u.proto");
    let got = compare(&kforge, &upstream, &[("k.proto", "u.proto")]);
    assert_eq!(got, ["k.proto: package: kforge says other, upstream (u.proto) says t", "other.M: message not upstream"]);
}

#[test]
fn reads_both_forms_of_go_descriptor() {
    let bytes = "[]byte{\n\t0x0a, 0x17, 0x67,\n\t0xff,\n}\n";
    assert_eq!(parse_go_bytes(bytes), Some(vec![0x0a, 0x17, 0x67, 0xff]));
    let string = "\"\" +\n\t\"\\n\" +\n\t\";x\\x12\\x10\\\"é\\u00e9\\000\\a\"\n\nconst next = 1\n";
    let mut want = b"\n;x\x12\x10\"".to_vec();
    want.extend_from_slice("éé".as_bytes());
    want.extend_from_slice(&[0, 7]);
    assert_eq!(parse_go_bytes(string), Some(want));
}
