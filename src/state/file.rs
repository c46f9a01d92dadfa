//! The snapshot file format (SPEC section 9.4).
//!
//! ```text
//! offset  size  field
//!  0       8    magic "LIQSNAP\0"
//!  8       4    format version (u32 LE), FORMAT_VERSION
//! 12       4    engine that wrote it (0 fast, 1 reference; informative: either restores it)
//! 16       8    config hash (image::config_hash)
//! 24       8    last effective seq the state holds
//! 32       8    created, ns since the Unix epoch
//! 40       8    accounts
//! 48       8    non-zero positions
//! 56       8    body length in bytes
//! 64       8    xxh3-64 of the body
//! 72       8    xxh3-64 of bytes 0..72 (the header itself)
//! 80       ...  body: postcard of image::Prelude, then of the account count (u64), then of
//!               each image::AccountImage
//! ```
//!
//! The body is serialized with `postcard` (serde, a stable documented wire format, varint
//! integers: a 3M-position book takes about 40 bytes a pair), chosen over `bincode` for its
//! specified format and active maintenance; the checksums are xxh3 (`xxhash-rust`). A reader
//! checks the header, its checksum, the length and the body checksum before it decodes
//! anything, so a corrupt or truncated file is refused whole, never half-loaded.

use std::io::{self, Seek, SeekFrom, Write};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::image::{AccountImage, Prelude};
use crate::engine::StateCopy;

pub const MAGIC: [u8; 8] = *b"LIQSNAP\0";
/// The body layout's version; a file of another version is skipped at restore.
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 80;

/// Which engine wrote a snapshot (either restores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineTag {
    Fast = 0,
    Reference = 1,
}

impl EngineTag {
    pub fn name(self) -> &'static str {
        match self {
            EngineTag::Fast => "fast",
            EngineTag::Reference => "reference",
        }
    }
}

/// A snapshot's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub engine: u32,
    pub config_hash: u64,
    pub last_seq: u64,
    pub created_unix_ns: u64,
    pub n_accounts: u64,
    pub n_positions: u64,
    pub body_bytes: u64,
    pub body_checksum: u64,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.engine.to_le_bytes());
        let words = [
            self.config_hash,
            self.last_seq,
            self.created_unix_ns,
            self.n_accounts,
            self.n_positions,
            self.body_bytes,
            self.body_checksum,
        ];
        for (k, w) in words.iter().enumerate() {
            b[16 + 8 * k..24 + 8 * k].copy_from_slice(&w.to_le_bytes());
        }
        let sum = xxh3_64(&b[..72]);
        b[72..80].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// The engine's name ("fast", "reference", or "unknown").
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            0 => "fast",
            1 => "reference",
            _ => "unknown",
        }
    }
}

/// Why a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    #[error("truncated: {len} bytes, shorter than the {HEADER_BYTES}-byte header")]
    Short { len: usize },
    #[error("not a liqscan snapshot (wrong magic)")]
    Magic,
    #[error("header checksum does not match (corrupt header)")]
    HeaderChecksum,
    #[error("format version {found}, this build reads version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("truncated or padded: the header gives a {expected}-byte body, the file holds {found}")]
    Length { expected: u64, found: u64 },
    #[error("body checksum {found:016x} does not match the header's {expected:016x} (corrupt)")]
    BodyChecksum { expected: u64, found: u64 },
    #[error("body cannot be decoded: {0}")]
    Decode(String),
}

fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Reads and checks the header of a whole file's bytes: length, magic, header checksum,
/// version. The body is not looked at.
pub fn read_header(bytes: &[u8]) -> Result<Header, SnapshotError> {
    if bytes.len() < HEADER_BYTES {
        return Err(SnapshotError::Short { len: bytes.len() });
    }
    if bytes[0..8] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    if word(bytes, 72) != xxh3_64(&bytes[..72]) {
        return Err(SnapshotError::HeaderChecksum);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    Ok(Header {
        version,
        engine: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        config_hash: word(bytes, 16),
        last_seq: word(bytes, 24),
        created_unix_ns: word(bytes, 32),
        n_accounts: word(bytes, 40),
        n_positions: word(bytes, 48),
        body_bytes: word(bytes, 56),
        body_checksum: word(bytes, 64),
    })
}

/// Checks a whole file: header, body length, body checksum. Nothing is decoded.
pub fn verify(bytes: &[u8]) -> Result<Header, SnapshotError> {
    let header = read_header(bytes)?;
    let body = &bytes[HEADER_BYTES..];
    if body.len() as u64 != header.body_bytes {
        return Err(SnapshotError::Length {
            expected: header.body_bytes,
            found: body.len() as u64,
        });
    }
    let found = xxh3_64(body);
    if found != header.body_checksum {
        return Err(SnapshotError::BodyChecksum { expected: header.body_checksum, found });
    }
    Ok(header)
}

/// Decodes the body of a file that [`verify`] accepted.
pub fn decode(
    bytes: &[u8],
    header: &Header,
) -> Result<(Prelude, Vec<AccountImage>), SnapshotError> {
    let bad = |e: postcard::Error| SnapshotError::Decode(e.to_string());
    let body = &bytes[HEADER_BYTES..];
    let (prelude, rest): (Prelude, _) = postcard::take_from_bytes(body).map_err(bad)?;
    let (n, mut rest): (u64, _) = postcard::take_from_bytes(rest).map_err(bad)?;
    if n != header.n_accounts {
        return Err(SnapshotError::Decode(format!(
            "the body holds {n} accounts, the header says {}",
            header.n_accounts
        )));
    }
    // Each account takes at least 4 bytes, so a count above that is a lie, not a reason to
    // reserve memory for it.
    let mut accounts = Vec::with_capacity((n as usize).min(rest.len() / 4));
    for _ in 0..n {
        let (account, more): (AccountImage, _) = postcard::take_from_bytes(rest).map_err(bad)?;
        accounts.push(account);
        rest = more;
    }
    if !rest.is_empty() {
        return Err(SnapshotError::Decode(format!("{} bytes after the last account", rest.len())));
    }
    Ok((prelude, accounts))
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Xxh3,
    bytes: u64,
    /// The first write error (a full disk): postcard reports any writer error as its own
    /// "buffer full", so the cause is kept here and given instead.
    error: Option<io::Error>,
}

impl<W: Write> Hashing<W> {
    /// Encodes `value` into the body; an error is the writer's own when it had one.
    fn encode<T: serde::Serialize>(&mut self, value: &T) -> io::Result<()> {
        match postcard::to_io(value, &mut *self) {
            Ok(_) => Ok(()),
            Err(e) => Err(self
                .error
                .take()
                .unwrap_or_else(|| io::Error::other(format!("snapshot encoding: {e}")))),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.inner.write(buf) {
            Ok(n) => n,
            Err(e) => {
                let kept = io::Error::new(e.kind(), e.to_string());
                self.error.get_or_insert(kept);
                return Err(e);
            }
        };
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a snapshot records besides the engine's copy.
#[derive(Debug, Clone)]
pub struct Meta {
    pub engine: EngineTag,
    pub config_hash: u64,
    pub symbols: Vec<String>,
    pub prelude_line: u64,
    pub last_seq: u64,
    pub counters: super::image::Counters,
    pub created_unix_ns: u64,
}

/// Writes a whole snapshot of `copy` to `out` (a new file): the header last, once the body's
/// length and checksum are known. Does not sync.
pub fn write<W: Write + Seek>(
    out: &mut W,
    copy: &dyn StateCopy,
    meta: &Meta,
) -> io::Result<Header> {
    out.write_all(&[0u8; HEADER_BYTES])?;
    let mut body = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, &mut *out),
        hasher: Xxh3::new(),
        bytes: 0,
        error: None,
    };
    let prelude = Prelude {
        symbols: meta.symbols.clone(),
        marks_e8: copy.marks().iter().map(|m| m.map(|d| d.0)).collect(),
        line: meta.prelude_line,
        counters: meta.counters,
    };
    body.encode(&prelude)?;
    body.encode(&copy.n_accounts())?;
    let (mut n_accounts, mut n_positions) = (0u64, 0u64);
    copy.each_account(&mut |account: &AccountImage| {
        n_accounts += 1;
        n_positions += account.pairs.iter().filter(|p| p.size_e8 != 0).count() as u64;
        body.encode(account)
    })?;
    if n_accounts != copy.n_accounts() {
        return Err(io::Error::other(format!(
            "the engine copy listed {n_accounts} accounts of {}",
            copy.n_accounts()
        )));
    }
    body.flush()?;
    let header = Header {
        version: FORMAT_VERSION,
        engine: meta.engine as u32,
        config_hash: meta.config_hash,
        last_seq: meta.last_seq,
        created_unix_ns: meta.created_unix_ns,
        n_accounts,
        n_positions,
        body_bytes: body.bytes,
        body_checksum: body.hasher.digest(),
    };
    drop(body);
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&header.to_bytes())?;
    out.flush()?;
    Ok(header)
}
