//! Argon2id hashing on a fixed set of threads, one per core by default: a
//! flood of sign-ups queues for a thread instead of exhausting memory.
//!
//! Each thread owns its 19 MiB work area and reuses it for every hash. Letting
//! argon2 allocate per hash made RSS grow by about 19 MiB per sign-up (glibc
//! placed the blocks in the heap and small allocations fragmented the freed
//! hole); mapping them fresh each time cost a fifth of the throughput in page
//! faults. So: fixed threads, fixed memory, RSS flat.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::config::Argon2Settings;
use crate::domain::Password;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// Hashes and verifies passwords on `concurrency` dedicated threads.
#[derive(Clone)]
pub struct Hasher {
    jobs: mpsc::Sender<Job>,
    /// A hash of a random password: verified against for unknown addresses so
    /// that a login costs the same whether or not the account exists.
    dummy: Arc<String>,
}

/// Hashing failed (a bug or resource exhaustion, never the user's fault).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

fn err(e: impl std::fmt::Display) -> HashError {
    HashError(e.to_string())
}

/// One hashing thread's state: the configured cost and its reusable memory.
struct Worker {
    params: Params,
    blocks: Vec<Block>,
}

impl Worker {
    fn compute(
        &mut self,
        algorithm: Algorithm,
        version: Version,
        params: Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), HashError> {
        let n = params.block_count();
        if self.blocks.len() < n {
            self.blocks.resize(n, Block::default());
        }
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt, out, &mut self.blocks[..n])
            .map_err(err)
    }

    fn hash(&mut self, password: &[u8]) -> Result<String, HashError> {
        let salt = argon2::password_hash::generate_salt();
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let params = self.params.clone();
        self.compute(
            Algorithm::Argon2id,
            Version::V0x13,
            params,
            password,
            &salt,
            &mut out,
        )?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(err)?,
            salt: Some(Salt::new(&salt).map_err(err)?),
            hash: Some(Output::new(&out).map_err(err)?),
        };
        Ok(phc.to_string())
    }

    /// Verifies against a PHC string with the parameters it names (so a cost
    /// change never locks anyone out).
    fn verify(&mut self, password: &[u8], phc: &str) -> Result<bool, HashError> {
        let parsed = PasswordHash::new(phc).map_err(err)?;
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return Ok(false);
        };
        let params = Params::try_from(&parsed).map_err(err)?;
        let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(err)?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).map_err(err)?,
            None => Version::V0x13,
        };
        let mut out = vec![0u8; expected.len()];
        self.compute(
            algorithm,
            version,
            params,
            password,
            salt.as_ref(),
            &mut out,
        )?;
        // Output's equality is constant-time.
        Ok(Output::new(&out).map_err(err)? == *expected)
    }
}

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
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).expect("the OS random source works");
        let dummy = Worker {
            params: params.clone(),
            blocks: Vec::new(),
        }
        .hash(&random)
        .expect("hashing a random password works");
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency.max(1) {
            let rx = rx.clone();
            let mut worker = Worker {
                params: params.clone(),
                blocks: Vec::new(),
            };
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut worker),
                            Err(_) => return, // every Hasher is gone
                        }
                    }
                })
                .expect("a hashing thread starts");
        }
        Self {
            jobs,
            dummy: Arc::new(dummy),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |worker| {
                let _ = tx.send(work(worker));
            }))
            .map_err(|_| err("the hashing threads are gone"))?;
        rx.await.map_err(|_| err("a hashing thread failed"))
    }

    /// The PHC string of a new password.
    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        self.run(move |w| w.hash(password.as_bytes())).await?
    }

    /// Whether `password` matches `phc`; with `None`, spends the same time and answers false.
    pub async fn verify(&self, password: Password, phc: Option<String>) -> Result<bool, HashError> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.as_str().to_owned());
        let matches = self
            .run(move |w| w.verify(password.as_bytes(), &phc))
            .await??;
        Ok(matches && known)
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

    #[tokio::test]
    async fn agrees_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let h = cheap();
        let ours = h
            .hash(Password::parse_new("interop password".into()).unwrap())
            .await
            .unwrap();
        let argon = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        );
        assert!(
            argon
                .verify_password(b"interop password", &PasswordHash::new(&ours).unwrap())
                .is_ok()
        );
        // A hash made elsewhere, with other parameters, still verifies here.
        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(128, 2, 1, None).unwrap(),
        )
        .hash_password(b"other password")
        .unwrap()
        .to_string();
        assert!(
            h.verify(
                Password::parse_login("other password".into()).unwrap(),
                Some(theirs.clone())
            )
            .await
            .unwrap()
        );
        assert!(
            !h.verify(
                Password::parse_login("wrong password".into()).unwrap(),
                Some(theirs)
            )
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
