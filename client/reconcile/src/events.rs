//! Kubernetes Events on Modules (reporter `kforge`). Publishing is best effort: a failure is
//! logged, never retried.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::metrics::Metrics;

/// What happened to a Module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    BuildStarted { image: String, kernel: String },
    BuildSucceeded { image: String },
    BuildFailed { image: String, message: String },
    ImageSigned { image: String },
    NoMapping { kernel: String },
    DaemonSetCreated { daemonset: String },
    DaemonSetDeleted { daemonset: String },
}

impl Note {
    fn event(&self) -> Event {
        let (type_, reason, note) = match self {
            Note::BuildStarted { image, kernel } => (EventType::Normal, "BuildStarted", format!("building {image} for kernel {kernel}")),
            Note::BuildSucceeded { image } => (EventType::Normal, "BuildSucceeded", format!("built {image}")),
            Note::BuildFailed { image, message } => (EventType::Warning, "BuildFailed", format!("{image}: {message}")),
            Note::ImageSigned { image } => (EventType::Normal, "ImageSigned", format!("signed {image}")),
            Note::NoMapping { kernel } => (EventType::Warning, "NoMapping", format!("no kernel mapping matches kernel {kernel}")),
            Note::DaemonSetCreated { daemonset } => (EventType::Normal, "DaemonSetCreated", format!("created DaemonSet {daemonset}")),
            Note::DaemonSetDeleted { daemonset } => (EventType::Normal, "DaemonSetDeleted", format!("deleted DaemonSet {daemonset}")),
        };
        // Events notes are limited to 1 kB.
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None }
    }
}

/// Publishes Events, or does nothing when disabled.
#[derive(Clone)]
pub(crate) struct Events(Option<(Recorder, Metrics)>);

impl Events {
    pub(crate) fn new(client: &kube::Client, enabled: bool, metrics: Metrics) -> Self {
        let reporter = Reporter { controller: "kforge".into(), instance: std::env::var("POD_NAME").ok() };
        Events(enabled.then(|| (Recorder::new(client.clone(), reporter), metrics)))
    }

    #[cfg(test)]
    pub(crate) fn disabled() -> Self {
        Events(None)
    }

    /// Publishes `note` on Module `namespace/name`.
    pub(crate) async fn module(&self, namespace: &str, name: &str, note: Note) {
        let Some((recorder, metrics)) = &self.0 else { return };
        let reference = ObjectReference {
            api_version: Some("kmm.sigs.x-k8s.io/v1beta1".into()),
            kind: Some("Module".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        };
        metrics.write("event");
        if let Err(e) = recorder.publish(&note.event(), &reference).await {
            metrics.write_failed("event");
            tracing::warn!(module = %format!("{namespace}/{name}"), error = %e, "cannot publish event");
        }
    }
}
