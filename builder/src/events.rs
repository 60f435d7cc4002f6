//! Build events (BuildKit's status stream, translated) and a plain-text renderer in the style of
//! `buildctl --progress=plain`.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

/// A step of the build (a BuildKit vertex) as it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Vertex digest.
    pub id: String,
    /// Human name (`[builder 3/5] RUN make`).
    pub name: String,
    /// Whether the result came from the cache.
    pub cached: bool,
    /// Whether the step has started.
    pub started: bool,
    /// Whether the step has finished.
    pub completed: bool,
    /// Time from start to finish, when both are known.
    pub duration: Option<Duration>,
    /// Error, if the step failed.
    pub error: Option<String>,
}

/// Something that happened during a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step started, finished, failed or was cached.
    Step(Step),
    /// Output of a step.
    Log {
        /// Vertex digest.
        step: String,
        /// 1 stdout, 2 stderr.
        stream: i32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Progress of a sub-task of a step (a layer download, an export).
    Progress {
        /// Vertex digest.
        step: String,
        /// Sub-task name.
        name: String,
        /// Units done.
        current: i64,
        /// Units in all (0 if unknown).
        total: i64,
        /// Whether the sub-task finished.
        completed: bool,
    },
    /// A warning about a step.
    Warning {
        /// Vertex digest.
        step: String,
        /// The warning.
        message: String,
    },
    /// A line of the push of the result (Docker engine).
    Push(String),
    /// What kforge itself is doing (reuse, retries, signing).
    Message(String),
}

/// Renders events like `buildctl --progress=plain`: `#N name`, log lines, `#N DONE 1.2s`.
pub struct PlainPrinter<W: Write> {
    out: W,
    numbers: HashMap<String, usize>,
    /// Per step: announced, finished.
    state: HashMap<String, (bool, bool)>,
    last_push: HashMap<String, String>,
    /// Per sub-task (step, name): announced, finished.
    progress: HashMap<(String, String), (bool, bool)>,
}

impl<W: Write> PlainPrinter<W> {
    /// A printer writing to `out`.
    pub fn new(out: W) -> Self {
        PlainPrinter { out, numbers: HashMap::new(), state: HashMap::new(), last_push: HashMap::new(), progress: HashMap::new() }
    }

    fn number(&mut self, id: &str) -> usize {
        let next = self.numbers.len() + 1;
        *self.numbers.entry(id.to_string()).or_insert(next)
    }

    /// Writes one event; I/O errors are ignored (progress output must never fail a build).
    pub fn print(&mut self, event: &Event) {
        let _ = self.write(event);
    }

    fn write(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::Step(s) => {
                let n = self.number(&s.id);
                let (announced, finished) = self.state.entry(s.id.clone()).or_default();
                if !*announced && (s.started || s.cached || s.completed) {
                    *announced = true;
                    writeln!(self.out, "#{n} {}", s.name)?;
                }
                let was_finished = std::mem::replace(finished, *finished || s.cached || s.completed || s.error.is_some());
                if let Some(e) = &s.error {
                    writeln!(self.out, "#{n} ERROR: {e}")?;
                } else if was_finished {
                } else if s.cached {
                    writeln!(self.out, "#{n} CACHED")?;
                } else if s.completed {
                    match s.duration {
                        Some(d) => writeln!(self.out, "#{n} DONE {:.1}s", d.as_secs_f64())?,
                        None => writeln!(self.out, "#{n} DONE")?,
                    }
                }
            }
            Event::Log { step, data, .. } => {
                let n = self.number(step);
                for line in String::from_utf8_lossy(data).lines() {
                    writeln!(self.out, "#{n} {line}")?;
                }
            }
            Event::Progress { step, name, total, completed, .. } => {
                // BuildKit repeats a sub-task's status while it runs: print its start and end once.
                let n = self.number(step);
                let (announced, done) = self.progress.entry((step.clone(), name.clone())).or_default();
                if *done {
                } else if *completed {
                    *done = true;
                    if *total > 0 {
                        writeln!(self.out, "#{n} {name} {} done", human(*total))?;
                    } else {
                        writeln!(self.out, "#{n} {name} done")?;
                    }
                } else if !std::mem::replace(announced, true) {
                    writeln!(self.out, "#{n} {name}")?;
                }
            }
            Event::Warning { step, message } => {
                let n = self.number(step);
                writeln!(self.out, "#{n} WARNING: {message}")?;
            }
            Event::Message(text) => writeln!(self.out, "kforge: {text}")?,
            Event::Push(line) => {
                // The engine repeats "id: Pushing" for every chunk; print each change once.
                let (id, status) = line.split_once(": ").unwrap_or(("", line));
                if self.last_push.get(id).map(String::as_str) != Some(status) {
                    self.last_push.insert(id.to_string(), status.to_string());
                    writeln!(self.out, "push: {line}")?;
                }
            }
        }
        self.out.flush()
    }
}

fn human(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{bytes}B") } else { format!("{v:.2}{}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, name: &str) -> Step {
        Step { id: id.into(), name: name.into(), cached: false, started: true, completed: false, duration: None, error: None }
    }

    #[test]
    fn renders_like_buildctl_plain() {
        let mut out = Vec::new();
        let mut p = PlainPrinter::new(&mut out);
        p.print(&Event::Step(step("a", "[internal] load build definition")));
        p.print(&Event::Step(Step { completed: true, duration: Some(Duration::from_millis(120)), ..step("a", "[internal] load build definition") }));
        p.print(&Event::Step(step("b", "[2/3] RUN make")));
        p.print(&Event::Log { step: "b".into(), stream: 1, data: b"cc -c hello.c\nld hello.o\n".to_vec() });
        p.print(&Event::Step(Step { cached: true, ..step("c", "[1/3] FROM base") }));
        p.print(&Event::Step(Step { cached: true, completed: true, ..step("c", "[1/3] FROM base") }));
        p.print(&Event::Push("abc: Pushing".into()));
        p.print(&Event::Push("abc: Pushing".into()));
        for current in [0, 0, 5, 9] {
            p.print(&Event::Progress { step: "c".into(), name: "extracting sha256:1".into(), current, total: 0, completed: false });
        }
        p.print(&Event::Progress { step: "c".into(), name: "extracting sha256:1".into(), current: 9, total: 0, completed: true });
        p.print(&Event::Progress { step: "c".into(), name: "extracting sha256:1".into(), current: 9, total: 0, completed: true });
        p.print(&Event::Push("abc: Pushed".into()));
        p.print(&Event::Step(Step { error: Some("exit code: 2".into()), ..step("b", "[2/3] RUN make") }));
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "#1 [internal] load build definition\n#1 DONE 0.1s\n#2 [2/3] RUN make\n#2 cc -c hello.c\n#2 ld hello.o\n#3 [1/3] FROM base\n#3 CACHED\npush: abc: Pushing\n#3 extracting sha256:1\n#3 extracting sha256:1 done\npush: abc: Pushed\n#2 ERROR: exit code: 2\n"
        );
    }
}
