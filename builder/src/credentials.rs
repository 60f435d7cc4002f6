//! Registry credentials, handed to BuildKit through the session when it asks (base image pulls,
//! pushes) — never as build arguments, never in the solve request.

use std::collections::BTreeMap;

/// Where a build finds registry credentials.
pub trait Credentials: Send + Sync {
    /// The username and secret (password or token) for `host` (`registry.example:5000`), or
    /// `None` for anonymous access.
    fn lookup(&self, host: &str) -> Option<(String, String)>;
}

/// No credentials: every registry is accessed anonymously.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

impl Credentials for Anonymous {
    fn lookup(&self, _host: &str) -> Option<(String, String)> {
        None
    }
}

/// Fixed credentials by host.
impl Credentials for BTreeMap<String, (String, String)> {
    fn lookup(&self, host: &str) -> Option<(String, String)> {
        self.get(host).cloned()
    }
}
