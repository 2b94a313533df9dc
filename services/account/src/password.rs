//! Argon2id hashing on a fixed set of threads, one per core by default: a
//! flood of sign-ups queues for a thread instead of exhausting memory. The
//! queue is bounded by time (`ACCOUNT_HASH_QUEUE`, a few seconds of work at
//! the measured hash time): past it a request is refused at once (503 with
//! Retry-After) instead of waiting minutes. A job whose client has gone by
//! the time a thread takes it is skipped: nobody would read the answer, and
//! a sign-up nobody waits for must not create a user or send mail.
//!
//! Each thread owns its 19 MiB work area and reuses it for every hash. Letting
//! argon2 allocate per hash made RSS grow by about 19 MiB per sign-up (glibc
//! placed the blocks in the heap and small allocations fragmented the freed
//! hole); mapping them fresh each time cost a fifth of the throughput in page
//! faults. So: fixed threads, fixed memory, RSS flat.
//!
//! On Linux the work area asks for transparent huge pages: argon2 reads a
//! pseudo-random earlier block for every block it writes, so with 4 KiB pages
//! most of those reads miss the TLB. 2 MiB pages make a hash about 10% faster
//! (about 15.6 ms → 14.1 ms at the default cost on our machines). Where the kernel
//! has THP off the advice is ignored and nothing else changes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::config::Argon2Settings;
use crate::domain::Password;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// Asks whether the client of a request is still connected.
pub type StillThere = Arc<dyn Fn() -> bool + Send + Sync>;

/// Hashes and verifies passwords on `concurrency` dedicated threads.
#[derive(Clone)]
pub struct Hasher {
    jobs: mpsc::Sender<Job>,
    /// A hash of a random password: verified against for unknown addresses so
    /// that a login costs the same whether or not the account exists.
    dummy: Arc<String>,
    /// Jobs sent and not yet taken by a thread.
    queued: Arc<AtomicUsize>,
    /// A moving average of one hash's time, in nanoseconds.
    hash_nanos: Arc<AtomicU64>,
    concurrency: usize,
    /// The longest estimated wait a new job may face.
    budget: Duration,
}

/// Why a password was not hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The queue holds more than its budget of work; retry after this.
    #[error("the password hashing queue is full")]
    Busy(Duration),
    /// The client left before a thread took the job; it was skipped.
    #[error("the client left before its password was hashed")]
    Abandoned,
    /// A bug or resource exhaustion, never the user's fault.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

fn err(e: impl std::fmt::Display) -> HashError {
    HashError::Failed(e.to_string())
}

/// One hashing thread's state: the configured cost and its reusable memory.
struct Worker {
    params: Params,
    area: WorkArea,
}

/// Argon2's memory, allocated once and backed by huge pages where the kernel
/// offers them.
#[derive(Default)]
struct WorkArea {
    buf: Vec<Block>,
    /// The first block at or after the first 2 MiB boundary in `buf` (the
    /// allocation itself is only block-aligned).
    offset: usize,
}

const HUGE_PAGE: usize = 2 << 20;
const BLOCKS_PER_HUGE_PAGE: usize = HUGE_PAGE / std::mem::size_of::<Block>();

impl WorkArea {
    /// A work area of at least `n` blocks.
    fn new(n: usize) -> Self {
        // One huge page of slack, so the blocks can start on a 2 MiB boundary.
        let mut buf: Vec<Block> = Vec::with_capacity(n + BLOCKS_PER_HUGE_PAGE);
        let base = buf.as_ptr() as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let end = base + buf.capacity() * std::mem::size_of::<Block>();
        advise_huge_pages(start, end - end % HUGE_PAGE);
        // Touched only now, after the advice, so the faults map huge pages.
        buf.resize(buf.capacity(), Block::default());
        Self {
            buf,
            offset: (start - base).div_ceil(std::mem::size_of::<Block>()),
        }
    }

    /// The first `n` blocks, growing the area if it is smaller.
    fn blocks(&mut self, n: usize) -> &mut [Block] {
        if self.buf.len() < self.offset + n {
            *self = Self::new(n);
        }
        &mut self.buf[self.offset..self.offset + n]
    }
}

/// Asks the kernel to back `start..end` (2 MiB aligned) with huge pages.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, end: usize) {
    if end > start {
        // SAFETY: `start..end` lies inside an allocation we own. MADV_HUGEPAGE
        // is advice about how to back the pages; it never changes their
        // contents or who may access them. A failure (THP off) is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: usize, _end: usize) {}

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
        let blocks = self.area.blocks(params.block_count());
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt, out, blocks)
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
    /// A hasher with the configured cost, `concurrency` threads and at most
    /// `budget` of estimated work queued.
    pub fn new(settings: Argon2Settings, concurrency: usize, budget: Duration) -> Self {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .expect("parameters are validated with the configuration");
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).expect("the OS random source works");
        let mut first = Worker {
            params: params.clone(),
            area: WorkArea::default(),
        };
        first
            .hash(&random)
            .expect("hashing a random password works");
        // The second hash reuses the work area, as every hash on a thread
        // does: its time is the first estimate of the queue's cost.
        let started = Instant::now();
        let dummy = first
            .hash(&random)
            .expect("hashing a random password works");
        let hash_nanos = started.elapsed().as_nanos().max(1) as u64;
        drop(first);
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency.max(1) {
            let rx = rx.clone();
            let mut worker = Worker {
                params: params.clone(),
                area: WorkArea::default(),
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
            queued: Arc::new(AtomicUsize::new(0)),
            hash_nanos: Arc::new(AtomicU64::new(hash_nanos)),
            concurrency: concurrency.max(1),
            budget,
        }
    }

    /// The wait a new job would face, from the queue and the average hash time.
    fn estimated_wait(&self) -> Duration {
        let queued = self.queued.load(Ordering::Relaxed) as u64 + 1;
        let nanos = self.hash_nanos.load(Ordering::Relaxed);
        Duration::from_nanos(nanos.saturating_mul(queued) / self.concurrency as u64)
    }

    async fn run<T: Send + 'static>(
        &self,
        still_there: Option<StillThere>,
        work: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let wait = self.estimated_wait();
        if wait > self.budget {
            metrics::counter!("account_hash_rejected_total", "reason" => "busy").increment(1);
            return Err(HashError::Busy(wait));
        }
        let (tx, rx) = oneshot::channel::<Option<T>>();
        let queued = self.queued.clone();
        let hash_nanos = self.hash_nanos.clone();
        queued.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("account_hash_queued").increment(1.0);
        let sent = self.jobs.send(Box::new(move |worker| {
            queued.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("account_hash_queued").decrement(1.0);
            if tx.is_closed() || still_there.is_some_and(|alive| !alive()) {
                let _ = tx.send(None);
                return;
            }
            let started = Instant::now();
            metrics::gauge!("account_hash_running").increment(1.0);
            let out = work(worker);
            metrics::gauge!("account_hash_running").decrement(1.0);
            metrics::counter!("account_hash_jobs_total").increment(1);
            // A moving average over about eight hashes.
            let sample = started.elapsed().as_nanos().max(1) as u64;
            let old = hash_nanos.load(Ordering::Relaxed);
            hash_nanos.store(old - old / 8 + sample / 8, Ordering::Relaxed);
            let _ = tx.send(Some(out));
        }));
        if sent.is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("account_hash_queued").decrement(1.0);
            return Err(err("the hashing threads are gone"));
        }
        match rx.await {
            Ok(Some(out)) => Ok(out),
            Ok(None) => {
                metrics::counter!("account_hash_rejected_total", "reason" => "abandoned")
                    .increment(1);
                Err(HashError::Abandoned)
            }
            Err(_) => Err(err("a hashing thread failed")),
        }
    }

    /// The PHC string of a new password, unless the client has gone first.
    pub async fn hash(
        &self,
        password: Password,
        still_there: Option<StillThere>,
    ) -> Result<String, HashError> {
        self.run(still_there, move |w| w.hash(password.as_bytes()))
            .await?
    }

    /// Whether `password` matches `phc`; with `None`, spends the same time and answers false.
    pub async fn verify(
        &self,
        password: Password,
        phc: Option<String>,
        still_there: Option<StillThere>,
    ) -> Result<bool, HashError> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.as_str().to_owned());
        let matches = self
            .run(still_there, move |w| w.verify(password.as_bytes(), &phc))
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
            Duration::from_secs(3),
        )
    }

    fn pw(s: &str) -> Password {
        Password::parse_login(s.into()).unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_says_when_to_retry() {
        // One thread, about 40 ms a hash, half a second of budget: some
        // ten jobs fit; a flood of 60 sees refusals, each with a wait past
        // the budget, and the ones that ran all succeeded.
        let h = Hasher::new(
            Argon2Settings {
                memory_kib: 16 * 1024,
                iterations: 3,
                parallelism: 1,
            },
            1,
            Duration::from_millis(500),
        );
        let jobs: Vec<_> = (0..60)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(pw("flood password"), None).await })
            })
            .collect();
        let (mut ok, mut busy) = (0, 0);
        for j in jobs {
            match j.await.unwrap() {
                Ok(phc) => {
                    assert!(phc.starts_with("$argon2id$"));
                    ok += 1
                }
                Err(HashError::Busy(wait)) => {
                    assert!(wait > Duration::from_millis(500), "{wait:?}");
                    busy += 1
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
        assert_eq!(
            h.queued.load(Ordering::Relaxed),
            0,
            "the count returns to zero"
        );
    }

    #[tokio::test]
    async fn a_job_whose_client_has_gone_is_skipped() {
        let h = cheap();
        let gone: StillThere = Arc::new(|| false);
        assert!(matches!(
            h.hash(pw("abandoned password"), Some(gone)).await,
            Err(HashError::Abandoned)
        ));
        let there: StillThere = Arc::new(|| true);
        assert!(h.hash(pw("waited password"), Some(there)).await.is_ok());
    }

    #[tokio::test]
    async fn hashes_argon2id_and_verifies() {
        let h = cheap();
        let phc = h
            .hash(Password::parse_new("correct horse".into()).unwrap(), None)
            .await
            .unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(
            h.verify(
                Password::parse_login("correct horse".into()).unwrap(),
                Some(phc.clone()),
                None
            )
            .await
            .unwrap()
        );
        assert!(
            !h.verify(
                Password::parse_login("wrong horse".into()).unwrap(),
                Some(phc),
                None
            )
            .await
            .unwrap()
        );
        assert!(
            !h.verify(
                Password::parse_login("anything".into()).unwrap(),
                None,
                None
            )
            .await
            .unwrap()
        );
    }

    #[tokio::test]
    async fn agrees_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let h = cheap();
        let ours = h
            .hash(
                Password::parse_new("interop password".into()).unwrap(),
                None,
            )
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
                Some(theirs.clone()),
                None
            )
            .await
            .unwrap()
        );
        assert!(
            !h.verify(
                Password::parse_login("wrong password".into()).unwrap(),
                Some(theirs),
                None
            )
            .await
            .unwrap()
        );
    }

    /// The `AnonHugePages` of the mapping that holds `addr`, in KiB.
    fn huge_kib_at(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
            } else if inside && let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
        None
    }

    #[test]
    fn the_work_area_is_huge_page_aligned_and_hashes_like_the_crate() {
        let params = Params::new(19456, 2, 1, None).unwrap();
        let mut worker = Worker {
            params: params.clone(),
            area: WorkArea::default(),
        };
        let mut ours = [0u8; 32];
        worker
            .compute(
                Algorithm::Argon2id,
                Version::V0x13,
                params.clone(),
                b"correct horse",
                b"sixteen byte salt",
                &mut ours,
            )
            .unwrap();
        let mut theirs = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(b"correct horse", b"sixteen byte salt", &mut theirs)
            .unwrap();
        assert_eq!(ours, theirs);

        let blocks = worker.area.blocks(19456);
        let addr = blocks.as_ptr() as usize;
        assert!(
            addr % HUGE_PAGE < std::mem::size_of::<Block>(),
            "the blocks start at a 2 MiB boundary, give or take one block"
        );
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if thp.contains("[madvise]") || thp.contains("[always]") {
            // The kernel may lack free huge pages; most of 19 MiB must still be huge.
            let huge = huge_kib_at(addr).expect("the work area is mapped");
            assert!(
                huge >= 8 * 1024,
                "only {huge} KiB on huge pages (THP: {thp})"
            );
        }
    }
}
