//! Overload protection: a cap on requests in flight and a per-identity signature rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::config::Limits;

/// Token buckets per identity (capacity twice the rate).
struct Buckets {
    rate: f64,
    what: &'static str,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Buckets {
    fn new(rate: f64, what: &'static str) -> Self {
        Buckets { rate, what, buckets: Mutex::new(HashMap::new()) }
    }

    fn take(&self, identity: &str) -> Result<(), Status> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let capacity = (self.rate * 2.0).max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().map_err(|_| Status::internal("rate limiter lock poisoned"))?;
        let (tokens, last) = buckets.entry(identity.to_string()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Status::resource_exhausted(format!("{identity} exceeds {} {} per second; slow down", self.rate, self.what)))
        }
    }
}

/// Shared limiters.
pub struct Limiter {
    in_flight: Arc<Semaphore>,
    max: usize,
    signatures: Buckets,
    requests: Buckets,
}

impl Limiter {
    /// Limiters for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Limiter {
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            max: limits.max_concurrent_requests,
            signatures: Buckets::new(limits.signatures_per_second, "signatures"),
            requests: Buckets::new(limits.requests_per_second, "requests"),
        }
    }

    /// A slot for one request, or RESOURCE_EXHAUSTED at once when all are taken.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted(format!("the service is serving its limit of {} requests; retry later", self.max)))
    }

    /// Takes one signature from the identity's token bucket.
    pub fn take_signature(&self, identity: &str) -> Result<(), Status> {
        self.signatures.take(identity)
    }

    /// Takes one request from the identity's token bucket.
    pub fn take_request(&self, identity: &str) -> Result<(), Status> {
        self.requests.take(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_concurrency_limits_refuse_with_resource_exhausted() {
        let l = Limiter::new(&Limits { max_concurrent_requests: 1, signatures_per_second: 1.0, ..Limits::default() });
        let first = l.admit().expect("first");
        assert_eq!(l.admit().expect_err("second").code(), tonic::Code::ResourceExhausted);
        drop(first);
        assert!(l.admit().is_ok());
        assert!(l.take_signature("a").is_ok() && l.take_signature("a").is_ok(), "burst of two");
        assert_eq!(l.take_signature("a").expect_err("third").code(), tonic::Code::ResourceExhausted);
        assert!(l.take_signature("b").is_ok(), "per identity");
        let r = Limiter::new(&Limits { requests_per_second: 1.0, ..Limits::default() });
        assert!(r.take_request("a").is_ok() && r.take_request("a").is_ok(), "burst of two");
        let e = r.take_request("a").expect_err("third request");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("requests per second"), "{}", e.message());
        assert!(r.take_signature("a").is_ok(), "signatures are not limited by the request rate");
    }
}
