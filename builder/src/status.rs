//! BuildKit's status stream, as [`Event`]s, and what it tells about a failure: step names and the
//! last log lines of each step.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use kforge_proto::buildkit::moby::buildkit::v1::StatusResponse;
use tokio::sync::mpsc::UnboundedSender;

use crate::events::{Event, Step};

/// Lines of a failing step's log kept for the error.
const LOG_TAIL: usize = 15;

/// What the status stream has seen: names and last log lines per step, and which step failed.
#[derive(Default)]
pub(crate) struct Seen {
    pub names: HashMap<String, String>,
    pub logs: HashMap<String, VecDeque<String>>,
    pub failed: Option<String>,
    pub ended: bool,
}

fn to_time(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t.as_ref()?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, t.nanos.clamp(0, 999_999_999) as u32))
}

/// Translates one status batch into events and records it.
pub(crate) fn translate(batch: StatusResponse, seen: &Mutex<Seen>, events: &UnboundedSender<Event>) {
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    for v in batch.vertexes {
        seen.names.insert(v.digest.clone(), v.name.clone());
        let error = (!v.error.is_empty()).then(|| v.error.clone());
        if error.is_some() && seen.failed.is_none() {
            seen.failed = Some(v.digest.clone());
        }
        let (started, completed) = (to_time(&v.started), to_time(&v.completed));
        let duration = match (started, completed) {
            (Some(s), Some(c)) => c.duration_since(s).ok(),
            _ => None,
        };
        let _ = events.send(Event::Step(Step {
            id: v.digest,
            name: v.name,
            cached: v.cached,
            started: started.is_some(),
            completed: completed.is_some(),
            duration,
            error,
        }));
    }
    for s in batch.statuses {
        let _ = events.send(Event::Progress { step: s.vertex, name: s.id, current: s.current, total: s.total, completed: s.completed.is_some() });
    }
    for l in batch.logs {
        let tail = seen.logs.entry(l.vertex.clone()).or_default();
        for line in String::from_utf8_lossy(&l.msg).lines() {
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
        let _ = events.send(Event::Log { step: l.vertex, stream: l.stream as i32, data: l.msg.to_vec() });
    }
    for w in batch.warnings {
        let _ = events.send(Event::Warning { step: w.vertex, message: String::from_utf8_lossy(&w.short).into_owned() });
    }
}
