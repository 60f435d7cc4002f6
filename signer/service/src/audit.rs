//! The append-only audit log: one JSON line per signature (and per refusal), fsync'd before the
//! signed bytes leave the server.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// The log file, shared by all requests.
#[derive(Clone)]
pub(crate) struct AuditLog {
    file: Arc<Mutex<File>>,
    path: PathBuf,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io(dir, "create audit directory"))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(Error::io(path, "open audit log"))?;
        Ok(AuditLog { file: Arc::new(Mutex::new(file)), path: path.into() })
    }

    /// Appends and fsyncs one record (blocking: call from a blocking thread).
    pub fn append(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        f.write_all(&line)?;
        f.sync_data()
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
