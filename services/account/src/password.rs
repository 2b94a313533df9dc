//! Argon2id hashing off the async workers, with bounded concurrency: a flood
//! of sign-ups queues for a permit instead of exhausting memory.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::Argon2Settings;
use crate::domain::Password;

/// Hashes and verifies passwords on the blocking pool, at most `concurrency` at once.
#[derive(Clone)]
pub struct Hasher {
    argon: Arc<Argon2<'static>>,
    permits: Arc<Semaphore>,
    /// A hash of a random password: verified against for unknown addresses so
    /// that a login costs the same whether or not the account exists.
    dummy: Arc<String>,
}

/// Hashing failed (a bug or resource exhaustion, never the user's fault).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl Hasher {
    /// A hasher with the configured cost.
    pub fn new(settings: Argon2Settings, concurrency: usize) -> Self {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .expect("parameters are validated with the configuration");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).expect("the OS random source works");
        let dummy = argon
            .hash_password(&random)
            .expect("hashing a random password works")
            .to_string();
        Self {
            argon: Arc::new(argon),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(dummy),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError(e.to_string()))?;
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || work(&argon))
            .await
            .map_err(|e| HashError(e.to_string()))
    }

    /// The PHC string of a new password.
    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        self.run(move |argon| {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError(e.to_string()))
        })
        .await?
    }

    /// Whether `password` matches `phc`; with `None`, spends the same time and answers false.
    pub async fn verify(&self, password: Password, phc: Option<String>) -> Result<bool, HashError> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.as_str().to_owned());
        self.run(move |argon| {
            let parsed = PasswordHash::new(&phc).map_err(|e| HashError(e.to_string()))?;
            Ok(argon.verify_password(password.as_bytes(), &parsed).is_ok() && known)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Hasher {
        Hasher::new(
            Argon2Settings {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            2,
        )
    }

    #[tokio::test]
    async fn hashes_argon2id_and_verifies() {
        let h = cheap();
        let phc = h
            .hash(Password::parse_new("correct horse".into()).unwrap())
            .await
            .unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(
            h.verify(
                Password::parse_login("correct horse".into()).unwrap(),
                Some(phc.clone())
            )
            .await
            .unwrap()
        );
        assert!(
            !h.verify(
                Password::parse_login("wrong horse".into()).unwrap(),
                Some(phc)
            )
            .await
            .unwrap()
        );
        assert!(
            !h.verify(Password::parse_login("anything".into()).unwrap(), None)
                .await
                .unwrap()
        );
    }

    #[test]
    fn default_cost_is_owasp_minimum() {
        let p = Params::new(19456, 2, 1, None).unwrap();
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (19456, 2, 1));
    }
}
