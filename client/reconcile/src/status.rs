//! Module conditions: `Ready`, `Progressing` and `Degraded`, with transition times carried over
//! from the previous status while a condition's status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// One reason to be Degraded or Progressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What and what to do.
    pub message: String,
}

/// Findings, without duplicate messages, in the order found.
#[derive(Debug, Default)]
pub(crate) struct Findings(pub Vec<Finding>);

impl Findings {
    /// Adds a finding unless the same message is already there.
    pub(crate) fn add(&mut self, reason: &'static str, message: String) {
        if !self.0.iter().any(|f| f.message == message) {
            self.0.push(Finding { reason, message });
        }
    }

    fn summary(&self) -> (&'static str, String) {
        let reason = self.0.first().map_or("", |f| f.reason);
        (reason, self.0.iter().map(|f| f.message.as_str()).collect::<Vec<_>>().join("; "))
    }
}

/// What the conditions are computed from.
pub(crate) struct Outcome<'a> {
    /// Problems.
    pub degraded: &'a Findings,
    /// Work under way.
    pub progressing: &'a Findings,
    /// Nodes with the module loaded, of those wanting it.
    pub available: i32,
    /// Nodes wanting the module.
    pub desired: i32,
}

fn condition(type_: &str, status: bool, reason: &str, message: String, generation: Option<i64>, previous: &[Condition], now: &Time) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous.iter().find(|c| c.type_ == type_ && c.status == status).map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition { type_: type_.into(), status: status.into(), reason: reason.into(), message, observed_generation: generation, last_transition_time }
}

/// The three conditions, in the order Ready, Progressing, Degraded.
pub(crate) fn conditions(o: &Outcome<'_>, generation: Option<i64>, previous: &[Condition], now: &Time) -> Vec<Condition> {
    let degraded = !o.degraded.0.is_empty();
    let progressing = !o.progressing.0.is_empty() || o.available < o.desired;
    let ready = !degraded && !progressing;
    let counts = format!("module loaded on {}/{} selected nodes with a kernel mapping", o.available, o.desired);
    let ready_reason = match (ready, degraded) {
        (true, _) => "Loaded",
        (false, true) => "Degraded",
        (false, false) => "Progressing",
    };
    let (p_reason, p_message) =
        if o.progressing.0.is_empty() { if progressing { ("Loading", counts.clone()) } else { ("Stable", String::new()) } } else { o.progressing.summary() };
    let (d_reason, d_message) = if degraded { o.degraded.summary() } else { ("AsExpected", String::new()) };
    vec![
        condition("Ready", ready, ready_reason, counts, generation, previous, now),
        condition("Progressing", progressing, p_reason, p_message, generation, previous, now),
        condition("Degraded", degraded, d_reason, d_message, generation, previous, now),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("time"))
    }

    #[test]
    fn transition_times_move_only_when_the_status_changes() {
        let none = Findings::default();
        let mut bad = Findings::default();
        bad.add("BuildFailed", "image x: boom".into());
        bad.add("BuildFailed", "image x: boom".into());
        assert_eq!(bad.0.len(), 1);
        let first = conditions(&Outcome { degraded: &none, progressing: &none, available: 2, desired: 2 }, Some(1), &[], &at(100));
        assert!(first.iter().all(|c| c.last_transition_time == at(100)));
        assert_eq!(first[0].status, "True");
        // Same outcome later: times kept.
        let again = conditions(&Outcome { degraded: &none, progressing: &none, available: 2, desired: 2 }, Some(2), &first, &at(200));
        assert!(again.iter().all(|c| c.last_transition_time == at(100)));
        assert_eq!(again[0].observed_generation, Some(2));
        // Degraded: Ready and Degraded flip (new time), Progressing stays False (old time).
        let broken = conditions(&Outcome { degraded: &bad, progressing: &none, available: 2, desired: 2 }, Some(2), &again, &at(300));
        assert_eq!((broken[0].status.as_str(), broken[0].last_transition_time.clone()), ("False", at(300)));
        assert_eq!((broken[1].status.as_str(), broken[1].last_transition_time.clone()), ("False", at(100)));
        assert_eq!((broken[2].status.as_str(), broken[2].reason.as_str()), ("True", "BuildFailed"));
        assert_eq!(broken[2].last_transition_time, at(300));
        assert_eq!(broken[2].message, "image x: boom");
        // Pods still loading: Progressing.
        let loading = conditions(&Outcome { degraded: &none, progressing: &none, available: 1, desired: 2 }, Some(2), &[], &at(1));
        assert_eq!((loading[1].status.as_str(), loading[1].reason.as_str()), ("True", "Loading"));
        assert_eq!(loading[0].status, "False");
    }
}
