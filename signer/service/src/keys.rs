//! The named signing keys, reloaded when their files change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use kforge_signer::SigningKey;

use crate::config::KeyConfig;
use crate::error::Error;

/// A loaded key and who may use it.
#[derive(Debug)]
pub(crate) struct Key {
    pub name: String,
    pub signing: SigningKey,
    pub allow: Vec<String>,
    files: Vec<(PathBuf, Option<SystemTime>)>,
}

impl Key {
    fn load(cfg: &KeyConfig) -> Result<Key, Error> {
        let (key, cert) = cfg.files()?;
        let passphrase = match &cfg.passphrase_file {
            Some(p) => {
                let mut b = std::fs::read(p).map_err(Error::io(p, "read passphrase file"))?;
                while matches!(b.last(), Some(b'\n' | b'\r')) {
                    b.pop();
                }
                Some(b)
            }
            None => None,
        };
        let signing = SigningKey::load(&key, &cert, passphrase.as_deref()).map_err(|e| Error::Key { name: cfg.name.clone(), error: Box::new(e.into()) })?;
        let mut files = vec![key, cert];
        files.extend(cfg.passphrase_file.clone());
        let files = files
            .into_iter()
            .map(|f| {
                let m = modified(&f);
                (f, m)
            })
            .collect();
        Ok(Key { name: cfg.name.clone(), signing, allow: cfg.allow.clone(), files })
    }

    fn changed(&self) -> bool {
        self.files.iter().any(|(f, m)| modified(f) != *m)
    }

    /// Whether any of `identities` may use this key.
    pub fn allows(&self, identities: &[String], authenticated: bool) -> bool {
        self.allow.iter().any(|a| (a == "*" && authenticated) || identities.iter().any(|i| i == a))
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    // A mounted Secret swaps a symlinked directory; the target's mtime changes with it.
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// All keys, swapped atomically on reload.
pub(crate) struct KeyStore {
    configs: Vec<KeyConfig>,
    keys: RwLock<Arc<HashMap<String, Arc<Key>>>>,
}

impl KeyStore {
    /// Loads every configured key; any failure stops the service from starting.
    pub fn load(configs: &[KeyConfig]) -> Result<Self, Error> {
        let mut keys = HashMap::new();
        for cfg in configs {
            let key = Key::load(cfg)?;
            tracing::info!(key = %key.name, subject = %key.signing.certificate().subject(), fingerprint = %key.signing.certificate().fingerprint_sha256(), "key loaded");
            keys.insert(cfg.name.clone(), Arc::new(key));
        }
        Ok(KeyStore { configs: configs.to_vec(), keys: RwLock::new(Arc::new(keys)) })
    }

    /// The current keys.
    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<Key>>> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// Reloads keys whose files changed; a key that fails to load keeps its previous version.
    pub fn reload_changed(&self) {
        let current = self.snapshot();
        let mut next = (*current).clone();
        let mut any = false;
        for cfg in &self.configs {
            if current.get(&cfg.name).is_some_and(|k| !k.changed()) {
                continue;
            }
            match Key::load(cfg) {
                Ok(k) => {
                    tracing::info!(key = %cfg.name, fingerprint = %k.signing.certificate().fingerprint_sha256(), "key reloaded");
                    next.insert(cfg.name.clone(), Arc::new(k));
                    any = true;
                }
                Err(e) => tracing::error!(key = %cfg.name, error = %e, "key files changed but do not load; keeping the previous key"),
            }
        }
        if any && let Ok(mut k) = self.keys.write() {
            *k = Arc::new(next);
        }
    }

    /// Polls for changed key files every `every` until the store is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                tokio::task::spawn_blocking(move || store.reload_changed()).await.ok();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, subject: &str) {
        let pair = kforge_signer::generate_key_pair(&kforge_signer::KeygenOptions { subject: subject.into(), bits: 2048, days: 1 }).expect("keygen");
        std::fs::write(dir.join("key"), pair.key.private_key_to_pem_pkcs8().expect("pem")).expect("write key");
        std::fs::write(dir.join("cert"), pair.cert.to_der().expect("der")).expect("write cert");
    }

    #[test]
    fn changed_key_files_are_reloaded_and_broken_ones_keep_the_old_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path(), "CN=first");
        let cfg = KeyConfig { name: "k".into(), key: None, cert: None, secret_dir: Some(dir.path().into()), passphrase_file: None, allow: vec!["*".into()] };
        let store = KeyStore::load(std::slice::from_ref(&cfg)).expect("load");
        let subject = |s: &KeyStore| s.snapshot()["k"].signing.certificate().subject();
        assert_eq!(subject(&store), "CN=first");
        store.reload_changed();
        assert_eq!(subject(&store), "CN=first", "unchanged files are not reloaded");
        // A new modification time is what marks a change; make sure it moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_pair(dir.path(), "CN=second");
        store.reload_changed();
        assert_eq!(subject(&store), "CN=second");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("key"), "not a key").expect("write");
        store.reload_changed();
        assert_eq!(subject(&store), "CN=second", "a key that no longer loads keeps the previous one");
    }
}
