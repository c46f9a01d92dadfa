//! The state directory (`--state-dir DIR`, SPEC section 9.4): writing a snapshot atomically,
//! keeping the newest [`KEEP`], restoring the newest valid one, and the writer thread that
//! keeps disk work off the engine thread.
//!
//! A snapshot is `snapshot-<seq, 20 digits>-<created ns, 20 digits>.liqsnap`, so names sort
//! in the order snapshots were made. It is written as `.snapshot-....tmp`, synced, renamed
//! over, and the directory synced (what SQLite and etcd do): a crash leaves either the whole
//! new file or none of it, plus perhaps a temporary file, which the next start removes and
//! logs.

use std::{
    any::Any,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossbeam::channel::{Receiver, Sender, bounded, select};
use tracing::{info, warn};

use super::{
    file::{self, Header, Meta, SnapshotError},
    image::{AccountImage, Prelude},
};
use crate::{engine::StateCopy, pipeline::Delivery};

/// Snapshots kept in the state directory; older ones are deleted after each write. Three
/// leave two to fall back on when the newest turns out corrupt.
pub const KEEP: usize = 3;

/// How long the writer waits for the sinks to confirm delivery of a snapshot's events
/// before it gives that snapshot up (a subscriber that stopped reading on an idle stream).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

const LOCK: &str = "lock";
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".liqsnap";
const TMP_PREFIX: &str = ".snapshot-";
const TMP_SUFFIX: &str = ".tmp";

pub fn now_unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// `DIR/lock`, locked (flock) for as long as this process runs: a second daemon on the
    /// same directory would delete this one's snapshots and restore from a mix.
    _lock: Arc<File>,
}

/// A snapshot written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub header: Header,
    /// Encoding and writing, then the two syncs and the rename.
    pub elapsed: Duration,
}

/// A valid snapshot found at start.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub header: Header,
    pub prelude: Prelude,
    pub accounts: Vec<AccountImage>,
}

impl StateDir {
    /// Opens (creating) `dir`.
    /// Opens (creating it if missing) and locks a state directory.
    ///
    /// # Errors
    /// The path is not a directory, cannot be created or written (the lock file is created
    /// in it), or another process holds its lock (another liqscan on the same state).
    pub fn open(dir: &Path) -> io::Result<StateDir> {
        if dir.exists() && !dir.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "it is not a directory"));
        }
        fs::create_dir_all(dir)?;
        let lock = File::options().create(true).truncate(false).write(true).open(dir.join(LOCK))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "another process (another liqscan run?) holds its lock file; one daemon per state directory",
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(StateDir { dir: dir.to_path_buf(), _lock: Arc::new(lock) })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Snapshot files, newest first (by name: seq, then creation time).
    pub fn snapshots(&self) -> io::Result<Vec<PathBuf>> {
        let mut found: Vec<(String, PathBuf)> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                (name.starts_with(PREFIX) && name.ends_with(SUFFIX)).then(|| (name, e.path()))
            })
            .collect();
        found.sort();
        Ok(found.into_iter().rev().map(|(_, p)| p).collect())
    }

    /// Removes temporary files a crash left in the middle of a write, logging each; returns
    /// how many.
    pub fn remove_leftovers(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX) {
                let bytes = entry.metadata().map_or(0, |m| m.len());
                warn!(file = %entry.path().display(), bytes, "removing a snapshot left half-written by a crash");
                fs::remove_file(entry.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes a snapshot of `copy` atomically, then deletes all but the newest [`KEEP`].
    pub fn write(&self, copy: &dyn StateCopy, meta: &Meta) -> io::Result<Written> {
        let started = Instant::now();
        let stem = format!("{:020}-{:020}", meta.last_seq, meta.created_unix_ns);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{stem}{TMP_SUFFIX}"));
        let path = self.dir.join(format!("{PREFIX}{stem}{SUFFIX}"));
        let written = (|| {
            let mut f = File::options().write(true).create_new(true).open(&tmp)?;
            let header = file::write(&mut f, copy, meta)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()?;
            Ok(header)
        })();
        let header = match written {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Only snapshots whose header reads count towards the newest KEEP: a junk or damaged
        // file with a snapshot's name must not push good ones out (it is left for an operator;
        // the start logs it).
        let mut kept = 0;
        for old in self.snapshots()? {
            if !header_reads(&old) {
                continue;
            }
            kept += 1;
            if kept > KEEP
                && let Err(e) = fs::remove_file(&old)
            {
                warn!(file = %old.display(), error = %e, "cannot delete an old snapshot");
            }
        }
        Ok(Written { path, header, elapsed: started.elapsed() })
    }

    /// The newest snapshot that reads whole: each newer one that does not (truncated, bad
    /// checksum, wrong magic or version, undecodable) is logged and skipped. `None` when
    /// there is none.
    pub fn newest_valid(&self) -> io::Result<Option<Found>> {
        for path in self.snapshots()? {
            match read(&path) {
                Ok((header, prelude, accounts)) => {
                    return Ok(Some(Found { path, header, prelude, accounts }));
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "snapshot skipped: it cannot be used");
                }
            }
        }
        Ok(None)
    }
}

/// Whether `path` is a regular file whose snapshot header reads (magic, version, header
/// checksum); the body is not read.
fn header_reads(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; file::HEADER_BYTES];
    File::open(path)
        .and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(io::Error::other("not a file"));
            }
            f.read_exact(&mut head)
        })
        .is_ok_and(|()| file::read_header(&head).is_ok())
}

/// Reads, verifies and decodes one snapshot file.
pub fn read(path: &Path) -> Result<(Header, Prelude, Vec<AccountImage>), SnapshotError> {
    let bytes = fs::read(path)?;
    let header = file::verify(&bytes)?;
    let (prelude, accounts) = file::decode(&bytes, &header)?;
    Ok((header, prelude, accounts))
}

/// Figures of the snapshots written, for `/metrics` and the log.
#[derive(Debug, Default)]
pub struct Stats {
    /// A write is in progress: the next snapshot due is skipped (counted in `skipped`).
    pub busy: AtomicBool,
    pub written: AtomicU64,
    /// Snapshots due while the previous one was still being written.
    pub skipped: AtomicU64,
    /// Snapshots given up: a write failed, or the sinks did not confirm delivery in time.
    pub failed: AtomicU64,
    /// Creation time (ns since the epoch) of the newest snapshot on disk, written or
    /// restored; 0 for none.
    pub newest_unix_ns: AtomicU64,
    pub last_bytes: AtomicU64,
    pub last_write_ns: AtomicU64,
    /// How long the engine thread stopped to take the last copy.
    pub last_stall_ns: AtomicU64,
    pub max_stall_ns: AtomicU64,
}

/// One snapshot for the writer thread.
pub struct Job {
    pub copy: Box<dyn StateCopy>,
    pub meta: Meta,
    pub delivery: Delivery,
}

/// The snapshot writer thread: takes one job at a time (the hand-off holds one: while a
/// write is in progress, the engine side skips the next snapshot instead of copying),
/// waits for the sinks to confirm delivery of every event up to the snapshot's seq, writes,
/// and hands the copy back for reuse.
pub struct Writer {
    jobs: Option<Sender<Job>>,
    /// Dropped by [`Writer::stop`]: the thread then ends after the write in progress, even
    /// while the ticker's handles still hold senders of `jobs`.
    quit: Option<Sender<()>>,
    reuse: Receiver<Box<dyn Any + Send>>,
    reuse_tx: Sender<Box<dyn Any + Send>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<Stats>,
    pub dir: StateDir,
}

impl Writer {
    pub fn start(dir: StateDir, stats: Arc<Stats>) -> io::Result<Writer> {
        let (jobs, rx) = bounded::<Job>(1);
        let (quit, quit_rx) = bounded::<()>(0);
        let (reuse_tx, reuse) = bounded::<Box<dyn Any + Send>>(1);
        let (thread_dir, thread_stats, own_reuse_tx) =
            (dir.clone(), stats.clone(), reuse_tx.clone());
        let thread =
            std::thread::Builder::new().name("snapshot-writer".into()).spawn(move || {
                loop {
                    let job = select! {
                        recv(rx) -> job => job,
                        recv(quit_rx) -> _ => break,
                    };
                    let Ok(job) = job else { break };
                    let mut copy = write_job(&thread_dir, &thread_stats, job);
                    copy.warm();
                    let _ = reuse_tx.try_send(copy.into_any());
                    thread_stats.busy.store(false, Relaxed);
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            quit: Some(quit),
            reuse,
            reuse_tx: own_reuse_tx,
            thread: Some(thread),
            stats,
            dir,
        })
    }

    /// A handle for the engine thread's snapshot requests.
    pub fn handle(&self, meta: Meta) -> Handle {
        Handle {
            jobs: self.jobs.clone().expect("the writer is running"),
            reuse: self.reuse.clone(),
            stats: self.stats.clone(),
            meta,
            lines_at_last: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// Waits for the write in progress, if any, and stops the thread. A job still queued
    /// is dropped: the shutdown snapshot that follows covers more.
    pub fn stop(&mut self) {
        self.jobs.take();
        self.quit.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Takes a first copy of `engine` and readies it for reuse, before the stream starts
    /// (after a restore the state may be big): the first periodic snapshot then copies into
    /// resident buffers instead of allocating and faulting them in while ingest waits.
    pub fn prepare(&self, engine: &dyn crate::engine::Engine) {
        let mut copy = engine.copy_state(None);
        copy.warm();
        let _ = self.reuse_tx.try_send(copy.into_any());
    }

    /// An earlier copy to write over, if the writer handed one back.
    pub fn take_reuse(&self) -> Option<Box<dyn Any + Send>> {
        self.reuse.try_recv().ok()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the engine thread needs to take a snapshot.
#[derive(Clone)]
pub struct Handle {
    jobs: Sender<Job>,
    reuse: Receiver<Box<dyn Any + Send>>,
    stats: Arc<Stats>,
    /// Engine, config hash and symbols; seq, line, counters and time are filled per snapshot.
    meta: Meta,
    /// Lines read when the last periodic snapshot was taken (`u64::MAX` before the first):
    /// a tick that finds none read since changes nothing on disk and is let pass, so an idle
    /// daemon keeps older snapshots to fall back on instead of three copies of one state.
    lines_at_last: Arc<AtomicU64>,
}

impl Handle {
    /// Takes a snapshot at `point` of `engine` (runs on the engine thread, between two
    /// messages): unless a write is in progress (then it is skipped and counted), copies the
    /// state, asks the sinks for delivery, and hands both to the writer thread.
    pub fn take(&self, engine: &dyn crate::engine::Engine, point: &crate::pipeline::Point<'_>) {
        if self.lines_at_last.load(Relaxed) == point.summary.lines {
            return;
        }
        if self.stats.busy.swap(true, Relaxed) {
            self.stats.skipped.fetch_add(1, Relaxed);
            return;
        }
        self.lines_at_last.store(point.summary.lines, Relaxed);
        let started = Instant::now();
        let copy = engine.copy_state(self.reuse.try_recv().ok());
        let delivery = (point.delivery)();
        let stall = started.elapsed().as_nanos() as u64;
        self.stats.last_stall_ns.store(stall, Relaxed);
        self.stats.max_stall_ns.fetch_max(stall, Relaxed);
        let mut meta = self.meta.clone();
        meta.last_seq = point.at.seq;
        meta.prelude_line = point.at.line;
        meta.counters = super::image::Counters::of(point.summary);
        meta.created_unix_ns = now_unix_ns();
        if self.jobs.try_send(Job { copy, meta, delivery }).is_err() {
            // Only when the writer thread is gone (the daemon is stopping).
            self.stats.busy.store(false, Relaxed);
            self.stats.failed.fetch_add(1, Relaxed);
        }
    }
}

/// Writes one job; returns its copy for reuse.
fn write_job(dir: &StateDir, stats: &Stats, job: Job) -> Box<dyn StateCopy> {
    let Job { copy, meta, delivery } = job;
    if !delivery.wait(Instant::now() + DELIVERY_TIMEOUT) {
        stats.failed.fetch_add(1, Relaxed);
        warn!(
            seq = meta.last_seq,
            "snapshot given up: the sinks did not confirm delivery of its events in time"
        );
        return copy;
    }
    match dir.write(&*copy, &meta) {
        Ok(w) => record(stats, &w),
        Err(e) => {
            stats.failed.fetch_add(1, Relaxed);
            warn!(dir = %dir.path().display(), error = %e, "snapshot write failed");
        }
    }
    copy
}

/// Counts a written snapshot and logs it.
pub fn record(stats: &Stats, w: &Written) {
    let bytes = w.header.body_bytes + file::HEADER_BYTES as u64;
    stats.written.fetch_add(1, Relaxed);
    stats.newest_unix_ns.store(w.header.created_unix_ns, Relaxed);
    stats.last_bytes.store(bytes, Relaxed);
    stats.last_write_ns.store(w.elapsed.as_nanos() as u64, Relaxed);
    info!(
        file = %w.path.display(),
        seq = w.header.last_seq,
        accounts = w.header.n_accounts,
        positions = w.header.n_positions,
        bytes,
        write_ms = w.elapsed.as_secs_f64() * 1e3,
        stall_ms = stats.last_stall_ns.load(Relaxed) as f64 / 1e6,
        "snapshot written"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        engine::{At, Engine},
        fast::FastEngine,
        state::{
            file::EngineTag,
            image::{Counters, config_hash},
        },
        synth,
    };

    fn engine() -> FastEngine {
        let cfg = Arc::new(synth::config(4));
        let mut e = FastEngine::new(cfg);
        for cmd in synth::book_commands(50, 150, 4, 3) {
            e.apply(&cmd, At { line: 1, seq: 1 }, &mut |_| {}).unwrap();
        }
        e
    }

    fn meta(seq: u64, created: u64) -> Meta {
        let cfg = synth::config(4);
        Meta {
            engine: EngineTag::Fast,
            config_hash: config_hash(&cfg),
            symbols: cfg.symbols.iter().map(|s| s.name.clone()).collect(),
            prelude_line: seq,
            last_seq: seq,
            counters: Counters { messages: seq, ..Counters::default() },
            created_unix_ns: created,
        }
    }

    /// Five writes keep the newest three; a corrupt newest is skipped for the next; a
    /// leftover temporary file is removed; what is read back is what was written.
    #[test]
    fn writes_keep_three_and_restore_skips_a_corrupt_newest() {
        let dir = std::env::temp_dir().join(format!("liqscan-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let e = engine();
        let copy = e.copy_state(None);
        for seq in 1..=5 {
            let w = state.write(&*copy, &meta(seq * 10, seq)).unwrap();
            assert_eq!(w.header.last_seq, seq * 10);
            assert_eq!(w.header.n_accounts, 50);
            assert_eq!(w.header.n_positions, e.n_positions() as u64);
        }
        let snaps = state.snapshots().unwrap();
        assert_eq!(snaps.len(), KEEP, "the newest {KEEP} are kept");
        let seqs: Vec<u64> = snaps.iter().map(|p| read(p).unwrap().0.last_seq).collect();
        assert_eq!(seqs, [50, 40, 30], "newest first");
        let (_, prelude, accounts) = read(&snaps[0]).unwrap();
        assert_eq!(prelude.counters.messages, 50);
        assert_eq!(accounts.len(), 50);
        // The newest corrupt: skipped, the next one found.
        let mut bytes = fs::read(&snaps[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&snaps[0], &bytes).unwrap();
        assert!(matches!(read(&snaps[0]), Err(SnapshotError::BodyChecksum { .. })));
        assert_eq!(state.newest_valid().unwrap().unwrap().header.last_seq, 40);
        // A crash mid-write leaves a temporary file: removed at start.
        fs::write(dir.join(".snapshot-1-2.tmp"), b"half").unwrap();
        assert_eq!(state.remove_leftovers().unwrap(), 1);
        assert_eq!(state.remove_leftovers().unwrap(), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Junk with a snapshot's name (a file that is not one, a directory) sorts newest but
    /// does not count towards the three kept, and is left alone; a second open of the same
    /// directory is refused while the first holds its lock; a file is not a directory.
    #[test]
    fn junk_does_not_push_good_snapshots_out_and_the_directory_is_locked() {
        let dir = std::env::temp_dir().join(format!("liqscan-store-junk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let junk = dir.join(format!("{PREFIX}{:020}-{:020}{SUFFIX}", u64::MAX, 1));
        fs::write(&junk, b"junk").unwrap();
        let junk_dir = dir.join(format!("{PREFIX}{:020}-{:020}{SUFFIX}", u64::MAX, 2));
        fs::create_dir(&junk_dir).unwrap();
        let copy = engine().copy_state(None);
        for seq in 1..=5 {
            state.write(&*copy, &meta(seq, seq)).unwrap();
        }
        let valid: Vec<u64> = state
            .snapshots()
            .unwrap()
            .iter()
            .filter_map(|p| read(p).ok().map(|(h, _, _)| h.last_seq))
            .collect();
        assert_eq!(valid, [5, 4, 3], "three good snapshots kept beside the junk");
        assert!(junk.exists() && junk_dir.exists(), "junk is left for an operator");
        assert_eq!(state.newest_valid().unwrap().unwrap().header.last_seq, 5);

        let second = StateDir::open(&dir).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::ResourceBusy, "{second}");
        drop(state);
        StateDir::open(&dir).expect("the lock goes with its holder");

        let not_dir = dir.join("plain-file");
        fs::write(&not_dir, b"x").unwrap();
        let e = StateDir::open(&not_dir).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
