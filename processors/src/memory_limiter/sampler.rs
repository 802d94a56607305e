//! The resident-memory sampler every `memory_limiter` of the process shares.
//!
//! One task reads the process's resident set size at the shortest `check_interval` of the
//! limiters registered with it and tells each of them, so the limiters of every pipeline see
//! the same reading and the process reads its memory once per tick, however many limiters
//! there are. The task stops when the last limiter using it shuts down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Limiter, State};

/// Where the sampler reads memory from, and how it asks for memory back.
pub trait Memory: Send + Sync + 'static {
    /// The process's resident set size, in bytes.
    fn resident_bytes(&self) -> std::io::Result<u64>;

    /// Asks the allocator to hand memory it holds but does not use back to the system.
    fn release(&self) {}
}

/// This process's memory, as Linux reports it in `/proc/self/statm`.
pub struct ProcessMemory;

impl ProcessMemory {
    /// Whether this system reports resident memory the way [`ProcessMemory`] reads it.
    pub const SUPPORTED: bool = cfg!(target_os = "linux");
}

#[cfg(target_os = "linux")]
impl Memory for ProcessMemory {
    fn resident_bytes(&self) -> std::io::Result<u64> {
        use std::sync::OnceLock;
        static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
        let page_size = *PAGE_SIZE.get_or_init(|| {
            // SAFETY: sysconf only reads a configuration value; it has no memory effects.
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
        });
        // `size resident shared text lib data dt`, in pages.
        let statm = std::fs::read_to_string("/proc/self/statm")?;
        let resident: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected /proc/self/statm: {statm:?}"),
                )
            })?;
        Ok(resident.saturating_mul(page_size))
    }

    fn release(&self) {
        // glibc keeps freed memory in its arenas; malloc_trim returns what it can. Other
        // allocators (musl) have no such call: there the limiter can only refuse data.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim takes no pointers and may be called at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Memory for ProcessMemory {
    fn resident_bytes(&self) -> std::io::Result<u64> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "resident memory is read from /proc/self/statm, which only Linux has",
        ))
    }
}

/// Used when no limiter is registered (between the last one leaving and the task stopping).
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// The shared sampler: the limiters it serves and its task.
pub struct Sampler {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    memory: Box<dyn Memory>,
    limiters: Mutex<Vec<Weak<Limiter>>>,
    /// Wakes the task when a limiter with a shorter interval registers.
    changed: Notify,
    /// The last reading, in bytes.
    rss: AtomicU64,
}

impl Sampler {
    /// The sampler of this process (reading [`ProcessMemory`]): the running one, or a new one
    /// started on the current tokio runtime.
    pub fn process() -> Arc<Sampler> {
        static PROCESS: Mutex<Weak<Sampler>> = Mutex::new(Weak::new());
        let mut process = PROCESS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sampler) = process.upgrade()
            && !sampler.stopped()
        {
            return sampler;
        }
        let sampler = Sampler::start(ProcessMemory);
        *process = Arc::downgrade(&sampler);
        sampler
    }

    /// A sampler of `memory`, its task started on the current tokio runtime.
    pub fn start(memory: impl Memory) -> Arc<Sampler> {
        let shared = Arc::new(Shared {
            memory: Box::new(memory),
            limiters: Mutex::new(Vec::new()),
            changed: Notify::new(),
            rss: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&shared), stop.clone()));
        Arc::new(Sampler {
            shared,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Whether the task has ended (its runtime is gone): such a sampler is not reused.
    fn stopped(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// Adds `limiter` and tells it the memory in use right away, so a process already above
    /// the limit refuses from its first batch.
    pub(super) fn register(&self, limiter: &Arc<Limiter>) {
        self.shared.lock_limiters().push(Arc::downgrade(limiter));
        if let Some(rss) = self.shared.read() {
            limiter.observe(rss);
        }
        self.shared.changed.notify_one();
    }

    /// Removes `limiter`.
    pub(super) fn unregister(&self, limiter: &Arc<Limiter>) {
        let target = Arc::downgrade(limiter);
        self.shared
            .lock_limiters()
            .retain(|l| !l.ptr_eq(&target) && l.strong_count() > 0);
    }

    /// The last reading, in bytes.
    pub fn last_rss(&self) -> u64 {
        self.shared.rss.load(Ordering::Relaxed)
    }

    /// Stops the task and waits for it if `sampler` is the last reference to it; otherwise
    /// only lets go of it (the others keep it running).
    pub async fn release_handle(sampler: Arc<Sampler>) {
        let Some(sampler) = Arc::into_inner(sampler) else {
            return;
        };
        sampler.stop.cancel();
        let task = sampler
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "memory sampler task failed");
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    fn lock_limiters(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Limiter>>> {
        self.limiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live limiters, dropping the ones that are gone.
    fn live(&self) -> Vec<Arc<Limiter>> {
        let mut limiters = self.lock_limiters();
        limiters.retain(|l| l.strong_count() > 0);
        limiters.iter().filter_map(Weak::upgrade).collect()
    }

    fn read(&self) -> Option<u64> {
        match self.memory.resident_bytes() {
            Ok(rss) => {
                self.rss.store(rss, Ordering::Relaxed);
                Some(rss)
            }
            Err(error) => {
                // Keep every limiter's state: with no reading there is nothing to act on.
                tracing::error!(%error, "memory_limiter cannot read the resident memory");
                None
            }
        }
    }

    /// One reading, given to `limiters`; whether it put any of them above its hard limit.
    fn check(&self, limiters: &[Arc<Limiter>]) -> bool {
        let Some(rss) = self.read() else {
            return false;
        };
        let mut hard = false;
        for limiter in limiters {
            hard |= limiter.observe(rss) == State::Hard;
        }
        hard
    }

    /// The shortest check interval of the live limiters.
    fn interval(&self) -> Duration {
        self.live()
            .iter()
            .map(|l| l.interval)
            .min()
            .unwrap_or(IDLE_INTERVAL)
    }
}

async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let interval = shared.interval();
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.changed.notified() => continue,
            () = tokio::time::sleep(interval) => tick(&shared).await,
        }
    }
}

/// One check. Above a hard limit the allocator is asked to release memory and the limiters
/// are told the memory in use after that.
async fn tick(shared: &Arc<Shared>) {
    let limiters = shared.live();
    if limiters.is_empty() || !shared.check(&limiters) {
        return;
    }
    let before = shared.rss.load(Ordering::Relaxed);
    let releasing = Arc::clone(shared);
    // malloc_trim walks the whole heap, which takes a while on a large one: not on the
    // async workers.
    if tokio::task::spawn_blocking(move || releasing.memory.release())
        .await
        .is_ok()
    {
        shared.check(&limiters);
        let after = shared.rss.load(Ordering::Relaxed);
        tracing::debug!(before, after, "memory_limiter released memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn process_memory_reads_a_plausible_resident_size() {
        let rss = ProcessMemory.resident_bytes().unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert!(rss < 64 << 30, "{rss}");
        // Touching 64 MiB shows up in the reading.
        let block = vec![1u8; 64 << 20];
        let grown = ProcessMemory.resident_bytes().unwrap();
        assert!(grown >= rss + (60 << 20), "{rss} -> {grown}");
        drop(block);
    }
}
