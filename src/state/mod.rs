//! State on disk (SPEC section 9.4): snapshots of the whole engine state, written atomically
//! with a checksum, restored at start.
//!
//! | part | owns |
//! |---|---|
//! | [`image`] | what a snapshot holds, engine-independent: marks, accounts, pairs, positions, order figures, flags, the seq and the counters |
//! | [`file`] | the file format: a fixed header (magic, version, config hash, seq, counts, checksums) and a postcard body; reading verifies before decoding |
//! | [`store`] | the state directory: atomic writes (temporary file, fsync, rename, fsync of the directory), the newest [`store::KEEP`] kept, restore of the newest valid one, the writer thread |
//!
//! Why engine-independent: either engine writes the same image and restores from it, so a
//! snapshot restores into `--engine fast` or `--engine reference` alike, and a restore under
//! a changed config (`--accept-config-change`) maps symbols by name and re-checks every
//! price and size against the new tick and step sizes. The engine thread only takes an owned
//! copy of its columns ([`crate::engine::Engine::copy_state`]); turning that copy into an
//! image and writing it happen on the writer thread.

pub mod file;
pub mod image;
pub mod store;

pub use file::{Header, SnapshotError};
pub use image::{AccountImage, Counters, Image, PairImage};

/// `liqscan snapshot inspect FILE`: writes the header, the counts and whether the file is
/// whole (header and body checksums, the body decodes, its counts match the header's) to
/// `out`. Exit 0 for a usable snapshot, 1 otherwise (the reason is printed).
pub fn inspect(path: &std::path::Path, out: &mut dyn std::io::Write) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut lines = Vec::new();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            let _ =
                writeln!(out, "file: {}\nok: false\nerror: cannot read it: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    lines.push(format!("file: {}", path.display()));
    lines.push(format!("bytes: {}", bytes.len()));
    let verdict = match file::read_header(&bytes) {
        Err(e) => Err(e),
        Ok(h) => {
            let created =
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(h.created_unix_ns);
            lines.push(format!("format_version: {}", h.version));
            lines.push(format!("written_by: {} engine", h.engine_name()));
            lines.push(format!("config_hash: {:016x}", h.config_hash));
            lines.push(format!("last_seq: {}", h.last_seq));
            lines.push(format!("created: {}", humantime::format_rfc3339_millis(created)));
            lines.push(format!("accounts: {}", h.n_accounts));
            lines.push(format!("positions: {}", h.n_positions));
            lines.push(format!("body_bytes: {}", h.body_bytes));
            lines.push(format!("body_checksum: {:016x}", h.body_checksum));
            file::verify(&bytes).and_then(|h| {
                let (prelude, accounts) = file::decode(&bytes, &h)?;
                let positions =
                    accounts.iter().flat_map(|a| &a.pairs).filter(|p| p.size_e8 != 0).count();
                if positions as u64 != h.n_positions {
                    return Err(SnapshotError::Decode(format!(
                        "the body holds {positions} positions, the header says {}",
                        h.n_positions
                    )));
                }
                let marked = prelude.marks_e8.iter().filter(|m| m.is_some()).count();
                lines.push(format!("symbols: {} ({marked} marked)", prelude.symbols.len()));
                lines.push(format!("messages: {}", prelude.counters.messages));
                lines.push(format!("liquidations: {}", prelude.counters.liquidations));
                Ok(())
            })
        }
    };
    match &verdict {
        Ok(()) => lines.push("checksum: ok".into()),
        Err(e) => {
            lines.push("checksum: FAILED".into());
            lines.push(format!("error: {e}"));
        }
    }
    lines.push(format!("ok: {}", verdict.is_ok()));
    let _ = writeln!(out, "{}", lines.join("\n"));
    if verdict.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
