//! Signing while the layers are still being read: every module kept from a layer is handed to the
//! rayon pool at once, so reading (one core) and signing (the others) overlap. A module that a later
//! layer deletes or replaces is simply never used; only files in the final tree are audited and
//! written into the new layer.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use kforge_signer::Signer;

use crate::spool::Spool;

/// One signed module, kept in the spool.
#[derive(Debug, Clone)]
pub(crate) struct SignedEntry {
    /// Spool id of the signed bytes.
    pub content: usize,
    pub module_name: String,
    pub vermagic: String,
    /// sha256 (hex) of the input and output, when an audit needs them.
    pub digests: Option<(String, String)>,
}

/// Why a module could not be signed.
#[derive(Debug)]
pub(crate) enum Failure {
    Signer(kforge_signer::Error),
    Spool(std::io::Error),
}

type Outcome = Result<SignedEntry, Failure>;

/// Signatures in flight and finished, by spool id of the unsigned module.
pub(crate) struct Presigner {
    signer: Arc<Signer>,
    spool: Arc<Spool>,
    digests: bool,
    state: Mutex<HashMap<usize, Option<Outcome>>>,
    done: Condvar,
}

impl Presigner {
    pub fn new(signer: Arc<Signer>, spool: Arc<Spool>, digests: bool) -> Arc<Self> {
        Arc::new(Presigner { signer, spool, digests, state: Mutex::new(HashMap::new()), done: Condvar::new() })
    }

    /// Starts signing the module stored under `id` in the background.
    pub fn start(self: &Arc<Self>, id: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.insert(id, None);
        }
        let me = self.clone();
        rayon::spawn(move || {
            let outcome = me.sign(id);
            if let Ok(mut s) = me.state.lock() {
                s.insert(id, Some(outcome));
            }
            me.done.notify_all();
        });
    }

    /// The signature of `id`: waits for one in flight, or signs now if none was started.
    pub fn take(&self, id: usize) -> Outcome {
        let Ok(mut s) = self.state.lock() else { return self.sign(id) };
        loop {
            match s.get(&id) {
                None => {
                    drop(s);
                    return self.sign(id);
                }
                Some(Some(_)) => {
                    if let Some(Some(outcome)) = s.remove(&id) {
                        return outcome;
                    }
                }
                Some(None) => match self.done.wait(s) {
                    Ok(guard) => s = guard,
                    Err(_) => return self.sign(id),
                },
            }
        }
    }

    fn sign(&self, id: usize) -> Outcome {
        let bytes = self.spool.read(id).map_err(Failure::Spool)?;
        let sha_in = self.digests.then(|| crate::digest::of(&bytes));
        let signed = self.signer.sign(bytes).map_err(Failure::Signer)?;
        let digests = sha_in.map(|i| (i.trim_start_matches("sha256:").to_string(), crate::digest::of(&signed.bytes).trim_start_matches("sha256:").to_string()));
        let content = self.spool.add(&signed.bytes).map_err(Failure::Spool)?;
        Ok(SignedEntry { content, module_name: signed.info.name, vermagic: signed.info.vermagic, digests })
    }
}
