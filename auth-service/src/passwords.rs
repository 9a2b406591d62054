//! Password hashing: argon2id at the OWASP-recommended parameters
//! (m = 19 MiB, t = 2, p = 1), always on the blocking pool and never more than
//! a configured number at once, so a login flood queues (then gets 503)
//! instead of exhausting memory or starving the async runtime.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

pub struct Passwords {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    /// A hash of a random password, verified against when the user does not
    /// exist so that unknown users cost the same as wrong passwords.
    dummy_hash: String,
}

impl Passwords {
    pub fn new(max_concurrent: NonZeroUsize, queue_timeout: Duration) -> anyhow::Result<Self> {
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let random = uuid::Uuid::new_v4().to_string();
        let dummy_hash = argon
            .hash_password(random.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        Ok(Self {
            argon,
            permits: Arc::new(Semaphore::new(max_concurrent.get())),
            queue_timeout,
            dummy_hash,
        })
    }

    /// A PHC-format argon2id hash of `password` with a fresh salt.
    pub async fn hash(&self, password: SecretString) -> Result<String> {
        let argon = self.argon.clone();
        self.blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(anyhow::anyhow!("argon2: {e}")))
        })
        .await
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown
    /// user) the same work is done against a dummy hash and `false` returned.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> Result<bool> {
        let argon = self.argon.clone();
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.clone());
        self.blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                tracing::error!("stored password hash is not in PHC format");
                return Ok(false);
            };
            let ok = argon
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok();
            Ok(ok && known)
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Error::Busy)?
            .map_err(|_| Error::Busy)?;
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("hashing task failed: {e}")))?;
        metrics::histogram!("password_hash_seconds").record(started.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let p = Passwords::new(
            NonZeroUsize::new(2).expect("positive"),
            Duration::from_secs(5),
        )
        .expect("argon2");
        let hash = p
            .hash(SecretString::from("correct horse"))
            .await
            .expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(p
            .verify(SecretString::from("correct horse"), Some(hash.clone()))
            .await
            .expect("verify"));
        assert!(!p
            .verify(SecretString::from("wrong horse"), Some(hash))
            .await
            .expect("verify"));
        assert!(!p
            .verify(SecretString::from("anything"), None)
            .await
            .expect("verify"));
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy() {
        let p = Passwords::new(NonZeroUsize::MIN, Duration::from_millis(20)).expect("argon2");
        let _held = p.permits.clone().acquire_owned().await.expect("permit");
        let r = p.hash(SecretString::from("password")).await;
        assert!(matches!(r, Err(Error::Busy)), "{r:?}");
    }
}
