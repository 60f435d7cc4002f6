//! The append-only audit log: one JSON line per signature (and per refusal), fsync'd before the
//! signed bytes leave the server.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::error::Error;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Record {
    pub time: String,
    pub request_id: String,
    pub identity: String,
    pub key: String,
    /// `signed`, `denied` or `failed`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vermagic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_in: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_out: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Record {
    pub fn new(request_id: &str, identity: &str, key: &str, result: &'static str) -> Record {
        Record {
            time: crate::time::rfc3339(SystemTime::now()),
            request_id: request_id.into(),
            identity: identity.into(),
            key: key.into(),
            result,
            module: None,
            vermagic: None,
            sha256_in: None,
            sha256_out: None,
            image: None,
            path: None,
            reason: None,
        }
    }
}

/// A line to write and where to report that it is durable.
type Pending = (Vec<u8>, std::sync::mpsc::Sender<std::io::Result<()>>);

/// The log file, shared by all requests. One writer thread appends and fsyncs in groups: records
/// that arrive while an fsync runs are written together and made durable by the next one.
#[derive(Clone)]
pub(crate) struct AuditLog {
    tx: std::sync::mpsc::SyncSender<Pending>,
    path: PathBuf,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io(dir, "create audit directory"))?;
        }
        let file = OpenOptions::new().create(true).append(true).read(true).open(path).map_err(Error::io(path, "open audit log"))?;
        drop_partial_line(&file, path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Pending>(1024);
        std::thread::Builder::new().name("kforge-audit".into()).spawn(move || writer(file, rx)).map_err(Error::io(path, "start the audit writer for"))?;
        Ok(AuditLog { tx, path: path.into() })
    }

    /// Appends one record and returns once it is on disk (blocking: call from a blocking thread).
    pub fn append(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.tx.send((line, done_tx)).map_err(|_| std::io::Error::other("the audit writer has stopped"))?;
        done_rx.recv().map_err(|_| std::io::Error::other("the audit writer has stopped"))?
    }

    /// Appends from async code.
    pub async fn append_async(&self, record: Record) -> std::io::Result<()> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.append(&record)).await.map_err(std::io::Error::other)?
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Cuts a record left half-written by a crash (no signature was returned for it: records are
/// acknowledged only after their fsync), so that every line of the log parses.
fn drop_partial_line(file: &File, path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_err(Error::io(path, "stat audit log"))?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start).map_err(Error::io(path, "read audit log"))?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        tracing::warn!(log = %path.display(), bytes = len - end, "dropping an incomplete last audit record left by a crash");
        file.set_len(end).map_err(Error::io(path, "truncate audit log"))?;
    }
    Ok(())
}

/// Writes whatever is pending, fsyncs once, and acknowledges every record in the group. A failed
/// write is cut back so that later records never follow a partial line.
fn writer(mut file: File, rx: std::sync::mpsc::Receiver<Pending>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < 512 {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let mut buf = Vec::with_capacity(group.iter().map(|(l, _)| l.len()).sum());
        for (line, _) in &group {
            buf.extend_from_slice(line);
        }
        let before = file.metadata().map(|m| m.len());
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        if let (Err(_), Ok(len)) = (&result, before) {
            let _ = file.set_len(len);
        }
        for (_, done) in group {
            let _ = done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_written_last_record_is_dropped_on_open_and_new_records_follow_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"trunc").expect("write");
        let log = AuditLog::open(&path).expect("open");
        log.append(&Record::new("r", "me", "k", "signed")).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for l in lines {
            serde_json::from_str::<serde_json::Value>(l).expect("every line parses");
        }
    }
}
