#!/usr/bin/env bash
# Runs liqscan's coverage-guided fuzz targets (cargo-fuzz, libFuzzer) on the machine's stable
# toolchain. See fuzz/README.md for what each target checks and why these flags.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]   (default: 60 s, every target)
# Needs: the Rust toolchain and a C++ compiler (libFuzzer is built from source by
# libfuzzer-sys); installs cargo-fuzz with `cargo install` when missing.
# New inputs go to a scratch folder, so the committed corpus stays small; a crash leaves its
# input under fuzz/artifacts/<target>/ and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo-fuzz passes -Z flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable compiler take them.
# -s none: no sanitizer (liqscan denies unsafe code; a panic is what the targets look for).
export RUSTC_BOOTSTRAP=1
secs=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(line_path config)
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  dict=()
  [[ -f "$t.dict" ]] && dict=(-dict="$t.dict")
  echo "== fuzz $t for ${secs}s (new inputs in $scratch)" >&2
  cargo fuzz run -s none --release "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1 "${dict[@]}"
  rm -rf "$scratch"
done
