//! Deterministic synthetic books and streams for benchmarks and load tests. (Named `synth`
//! because `gen` is a reserved word in Rust 2024.)
//!
//! Everything here is a pure function of its parameters and seed (SplitMix64, no platform
//! randomness), so the same call yields the same bytes on every machine.

use std::fmt::Write as _;

use crate::{
    config::{Config, Mode, SymbolIdx},
    fixed::D8,
    protocol::Command,
};

/// SplitMix64: tiny, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A config of `n` symbols `S000`, `S001`, ... with tick 0.01, step 0.001 and a five-tier
/// bracket table (125x at 0.4 % up to 10x at 5 %). `n` must be 1 to 65,535 (the config's
/// symbol count); `liqscan gen` allows 1 to 10,000.
pub fn config(n: usize) -> Config {
    // Every rule holds for the fixed table above; only `n` could break one.
    assert!((1..=crate::config::MAX_SYMBOLS).contains(&n), "{n} symbols");
    Config::parse(&config_text(n)).expect("the synthetic config is valid")
}

/// The JSON text of [`config`].
pub fn config_text(n: usize) -> String {
    let mut text =
        String::from(r#"{"default_margin_mode":"cross","default_leverage":20,"symbols":["#);
    for i in 0..n {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(
            text,
            r#"{{"symbol":"S{i:03}","tick_size":"0.01","step_size":"0.001","brackets":[
            {{"notional_cap":"50000","max_leverage":125,"mmr":"0.004"}},
            {{"notional_cap":"250000","max_leverage":100,"mmr":"0.005"}},
            {{"notional_cap":"1000000","max_leverage":50,"mmr":"0.01"}},
            {{"notional_cap":"5000000","max_leverage":20,"mmr":"0.025"}},
            {{"notional_cap":"20000000","max_leverage":10,"mmr":"0.05"}}]}}"#
        );
    }
    text.push_str("]}\n");
    text
}

/// Base price of symbol `i` in units of 0.01: spread from ~100 to ~60 000, so that the
/// 0.01 tick is at most 0.01 % of a price (a coarser tick makes every step a jump).
pub fn base_price_e2(i: usize) -> i64 {
    let exp = (i % 7) as u32;
    (10_000 * 3i64.pow(exp)).min(6_000_000) + (i as i64 * 7919) % 10_000
}

/// Zipf-like popularity: symbol k is chosen with weight 1 / (k + 1).
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize) -> Zipf {
        let mut acc = 0.0;
        let cumulative = (0..n)
            .map(|k| {
                acc += 1.0 / (k as f64 + 1.0);
                acc
            })
            .collect();
        Zipf { cumulative }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let x = rng.unit() * self.cumulative.last().copied().unwrap_or(0.0);
        // `n` >= 1 symbols (a config holds at least one): `len() - 1` does not wrap.
        self.cumulative.partition_point(|&c| c <= x).min(self.cumulative.len() - 1)
    }
}

/// The start-up book as commands: each account's balance, then its positions (distinct
/// symbols, Zipf-skewed, heavy-tailed sizes, a quarter of them isolated). Wallets hold 3 to
/// 50 % of the cross notional and isolated margins 3 to 20 % of theirs, entries sit within
/// 1 % of the base price: a healthy book in which a moving mark liquidates a steady few.
pub fn book_commands(
    accounts: u64,
    positions: u64,
    symbols: usize,
    seed: u64,
) -> impl Iterator<Item = Command> {
    let mut rng = Rng::new(seed);
    let zipf = Zipf::new(symbols);
    let per_account = positions as f64 / accounts as f64;
    let mut made = 0u64;
    (0..accounts).flat_map(move |a| {
        // Spread `positions` over the accounts as evenly as the fraction allows.
        let want = (((a + 1) as f64 * per_account) as u64).saturating_sub(made).min(symbols as u64);
        made += want;
        let mut cmds = Vec::with_capacity(want as usize * 2 + 1);
        cmds.push(Command::Balance { account: a, wallet: D8::ZERO });
        let mut chosen: Vec<usize> = Vec::with_capacity(want as usize);
        while (chosen.len() as u64) < want {
            let s = zipf.sample(&mut rng);
            if !chosen.contains(&s) {
                chosen.push(s);
            }
        }
        let mut cross_notional_e2 = 0i64;
        for s in chosen {
            let isolated = rng.below(4) == 0;
            let symbol = SymbolIdx(s as u16); // s < symbols <= 65,535
            if isolated {
                cmds.push(Command::MarginMode { account: a, symbol, mode: Mode::Isolated });
            }
            // Heavy tail: notional ~ 100 * 2^k for k uniform in 0..14 (100 to ~1.6M).
            let notional_e2 = 10_000i64 << rng.below(14);
            let px = base_price_e2(s);
            let lots = (notional_e2 * 1000 / px).max(1) * if rng.below(2) == 0 { 1 } else { -1 };
            let entry_e2 = (px + rng.below(px as u64 / 50 + 1) as i64 - px / 100).max(1);
            let margin_e2 = notional_e2 * (3 + rng.below(18) as i64) / 100;
            if !isolated {
                cross_notional_e2 += notional_e2;
            }
            cmds.push(Command::Position {
                account: a,
                symbol,
                size: D8(i128::from(lots) * 100_000),
                entry_price: Some(D8(i128::from(entry_e2) * 1_000_000)),
                isolated_margin: isolated.then_some(D8(i128::from(margin_e2) * 1_000_000)),
            });
        }
        let wallet_e2 = 100_000 + cross_notional_e2 * (3 + rng.below(48) as i64) / 100;
        cmds[0] = Command::Balance { account: a, wallet: D8(i128::from(wallet_e2) * 1_000_000) };
        cmds
    })
}

/// Mark prices as random walks of 0.05 % steps per symbol, pulled back towards the base
/// price so that a long stream stays within about 1 % of it, with a jump of 0.5 to 1.5 % one
/// message in 400, a one-message wick of 1 to 3 % one message in 800, and now and then a
/// volatility burst: 200 marks of the symbol at four times the step, within 3 %.
#[derive(Debug, Clone)]
pub struct MarkWalk {
    rng: Rng,
    /// Symbols chosen Zipf-skewed, or uniformly when `None`.
    zipf: Option<Zipf>,
    px_e2: Vec<i64>,
    /// Marks left in each symbol's volatility burst.
    burst: Vec<u16>,
    /// A wick in progress: the symbol and the price to return to on the next message.
    wick: Option<(usize, i64)>,
}

impl MarkWalk {
    /// Marks follow symbol popularity (Zipf).
    pub fn new(symbols: usize, seed: u64) -> MarkWalk {
        MarkWalk { zipf: Some(Zipf::new(symbols)), ..MarkWalk::uniform(symbols, seed) }
    }

    /// Every symbol is marked at the same rate, as venues publish marks on a fixed cadence.
    pub fn uniform(symbols: usize, seed: u64) -> MarkWalk {
        MarkWalk {
            rng: Rng::new(seed),
            zipf: None,
            px_e2: (0..symbols).map(base_price_e2).collect(),
            burst: vec![0; symbols],
            wick: None,
        }
    }

    /// The next (symbol, price in units of 0.01).
    pub fn next_mark(&mut self) -> (usize, i64) {
        if let Some((s, back)) = self.wick.take() {
            self.px_e2[s] = back;
            return (s, back);
        }
        let s = match &self.zipf {
            Some(z) => z.sample(&mut self.rng),
            None => self.rng.below(self.px_e2.len() as u64) as usize,
        };
        let sign = if self.rng.below(2) == 0 { 1 } else { -1 };
        match self.rng.below(800) {
            0 => {
                let px = self.px_e2[s];
                self.wick = Some((s, px));
                let wicked = px + sign * px * (10 + self.rng.below(21) as i64) / 1000;
                return (s, wicked.max(1));
            }
            1 | 2 => {
                let px = self.px_e2[s];
                self.px_e2[s] = (px + sign * px * (5 + self.rng.below(11) as i64) / 1000).max(1);
                return (s, self.px_e2[s]);
            }
            3 => self.burst[s] = 200,
            _ => {}
        }
        let (base, px) = (base_price_e2(s), self.px_e2[s]);
        let (mut step, mut band) = ((px / 2000).max(1), base / 100);
        if self.burst[s] > 0 {
            self.burst[s] -= 1;
            (step, band) = (step * 4, band * 3);
        }
        let pull = if px > base + band {
            -1
        } else if px < base - band {
            1
        } else {
            0
        };
        self.px_e2[s] = (px + (self.rng.below(5) as i64 - 2 + pull) * step).max(1);
        (s, self.px_e2[s])
    }

    pub fn price_e2(&self, s: usize) -> i64 {
        self.px_e2[s]
    }
}

fn mark_line(out: &mut String, s: usize, px_e2: i64) {
    let _ = writeln!(
        out,
        r#"{{"type":"mark","symbol":"S{s:03}","price":"{}.{:02}"}}"#,
        px_e2 / 100,
        px_e2 % 100
    );
}

/// `n` mark messages as NDJSON lines (see [`MarkWalk`]).
pub fn mark_lines(symbols: usize, n: usize, seed: u64) -> String {
    let mut walk = MarkWalk::new(symbols, seed);
    let mut out = String::with_capacity(n * 56);
    for _ in 0..n {
        let (s, px) = walk.next_mark();
        mark_line(&mut out, s, px);
    }
    out
}

/// The book of [`book_commands`] as NDJSON lines (for replays that include the start-up).
pub fn book_lines(accounts: u64, positions: u64, symbols: usize, seed: u64) -> String {
    let cfg = config(symbols);
    let mut out = String::new();
    for cmd in book_commands(accounts, positions, symbols, seed) {
        write_command(&mut out, &cfg, &cmd);
        out.push('\n');
    }
    out
}

/// Appends `mantissa / 10^scale` to `out` as [`crate::fixed::format_scaled`] writes it (no
/// exponent, no trailing zeros after the point, no `-0`), without allocating: the generator
/// writes millions of these a second.
pub fn push_scaled(out: &mut String, mantissa: i128, scale: u32) {
    debug_assert!(scale <= 18, "scale {scale}");
    if mantissa < 0 {
        out.push('-');
    }
    let magnitude = mantissa.unsigned_abs();
    // Every amount the generator writes fits in 64 bits, where division is one instruction
    // (a 128-bit one is a library call).
    let Ok(magnitude) = u64::try_from(magnitude) else {
        let unit = 10u128.pow(scale);
        let (int, frac) = (magnitude / unit, magnitude % unit);
        let _ = write!(out, "{int}");
        // `frac` < 10^scale <= 10^18 fits in 64 bits.
        return push_fraction(out, frac as u64, scale);
    };
    let unit = 10u64.pow(scale);
    push_u64(out, magnitude / unit);
    push_fraction(out, magnitude % unit, scale);
}

/// Appends `.` and the `scale` digits of `frac` without their trailing zeros (nothing when
/// `frac` is 0).
fn push_fraction(out: &mut String, mut frac: u64, scale: u32) {
    if frac == 0 {
        return;
    }
    let mut width = scale as usize;
    while frac.is_multiple_of(10) {
        frac /= 10;
        width -= 1;
    }
    let mut digits = [b'0'; 20];
    let mut k = digits.len();
    while frac > 0 {
        k -= 1;
        digits[k] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    // The leading zeros: `width` digits in all (`frac` < 10^width, so k >= 20 - width).
    out.push('.');
    out.extend(digits[digits.len() - width..].iter().map(|&b| char::from(b)));
}

/// Appends `v` in decimal.
pub fn push_u64(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend(digits[k..].iter().map(|&b| char::from(b)));
}

/// A command as the JSON message `liqscan gen` writes for it, without `seq` and without a
/// newline: fields in a fixed order, numbers as [`crate::fixed::format_scaled`] writes them
/// (no exponent, no trailing zeros), a position's `entry_price` and `isolated_margin` only
/// when the command has them, an `orders` message always with its `order_margin`. Parsing and
/// validating the text against `cfg` gives `cmd` back. Written with no `fmt` machinery and
/// no allocation: the generator's writer thread formats millions of these a second.
pub fn write_command(out: &mut String, cfg: &Config, cmd: &Command) {
    let name = |s: SymbolIdx| cfg.symbol(s).name.as_str();
    let account_field = |out: &mut String, ty: &str, account: u64| {
        out.push_str(r#"{"type":""#);
        out.push_str(ty);
        out.push_str(r#"","account":"#);
        push_u64(out, account);
    };
    let symbol_field = |out: &mut String, s: SymbolIdx| {
        out.push_str(r#","symbol":""#);
        out.push_str(name(s));
        out.push('"');
    };
    let decimal_field = |out: &mut String, key: &str, v: D8| {
        out.push_str(r#",""#);
        out.push_str(key);
        out.push_str(r#"":""#);
        push_scaled(out, v.0, 8);
        out.push('"');
    };
    match cmd {
        Command::Mark { symbol, price } => {
            out.push_str(r#"{"type":"mark""#);
            symbol_field(out, *symbol);
            decimal_field(out, "price", *price);
        }
        Command::Marks { prices } => {
            out.push_str(r#"{"type":"marks","prices":{"#);
            for (i, &(s, px)) in prices.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(name(s));
                out.push_str(r#"":""#);
                push_scaled(out, px.0, 8);
                out.push('"');
            }
            out.push('}');
        }
        Command::Balance { account, wallet } => {
            account_field(out, "balance", *account);
            decimal_field(out, "wallet", *wallet);
        }
        Command::Transfer { account, amount } => {
            account_field(out, "transfer", *account);
            decimal_field(out, "amount", *amount);
        }
        Command::Position { account, symbol, size, entry_price, isolated_margin } => {
            account_field(out, "position", *account);
            symbol_field(out, *symbol);
            decimal_field(out, "size", *size);
            if let Some(px) = entry_price {
                decimal_field(out, "entry_price", *px);
            }
            if let Some(m) = isolated_margin {
                decimal_field(out, "isolated_margin", *m);
            }
        }
        Command::MarginMode { account, symbol, mode } => {
            account_field(out, "margin_mode", *account);
            symbol_field(out, *symbol);
            out.push_str(r#","mode":""#);
            out.push_str(mode.as_str());
            out.push('"');
        }
        Command::Leverage { account, symbol, leverage } => {
            account_field(out, "leverage", *account);
            symbol_field(out, *symbol);
            out.push_str(r#","leverage":"#);
            push_u64(out, *leverage);
        }
        Command::Orders { account, symbol, open_orders, order_margin } => {
            account_field(out, "orders", *account);
            symbol_field(out, *symbol);
            out.push_str(r#","open_orders":"#);
            push_u64(out, *open_orders);
            decimal_field(out, "order_margin", *order_margin);
        }
        Command::IsolatedMargin { account, symbol, amount } => {
            account_field(out, "isolated_margin", *account);
            symbol_field(out, *symbol);
            decimal_field(out, "amount", *amount);
        }
        Command::Funding { symbol, rate } => {
            out.push_str(r#"{"type":"funding""#);
            symbol_field(out, *symbol);
            decimal_field(out, "rate", *rate);
        }
        Command::Query { account } => account_field(out, "query", *account),
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_skewed() {
        assert_eq!(mark_lines(5, 100, 7), mark_lines(5, 100, 7));
        assert_ne!(mark_lines(5, 100, 7), mark_lines(5, 100, 8));
        let mut rng = Rng::new(1);
        let z = Zipf::new(50);
        let mut counts = [0u32; 50];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > 10 * counts[49], "{counts:?}");
    }

    #[test]
    fn push_scaled_writes_what_format_scaled_writes() {
        let mut rng = Rng::new(9);
        let mut cases: Vec<(i128, u32)> = vec![(0, 2), (-1, 8), (100, 2), (-100, 2), (5, 0)];
        // Beyond 64 bits: the wide path.
        cases.extend([(i128::MAX, 8), (i128::MIN + 1, 8), (-(1i128 << 70) - 10, 2), (1 << 64, 0)]);
        for _ in 0..2000 {
            let m =
                (rng.next_u64() >> rng.below(64)) as i128 * if rng.below(2) == 0 { 1 } else { -1 };
            // Trailing zeros in the mantissa are the case to get right.
            cases.push((m * 10i128.pow(rng.below(6) as u32), [0, 2, 8][rng.below(3) as usize]));
        }
        for (m, scale) in cases {
            let (mut got, mut want) = (String::new(), String::new());
            push_scaled(&mut got, m, scale);
            crate::fixed::format_scaled(m, scale, &mut want);
            assert_eq!(got, want, "{m} at scale {scale}");
        }
    }

    #[test]
    fn write_command_validates_back_to_the_command() {
        let cfg = config(12);
        let (s3, s11) = (SymbolIdx(3), SymbolIdx(11));
        let d = |v: i128| D8(v);
        let cases = [
            Command::Mark { symbol: s3, price: d(12_345_000_000) },
            Command::Marks { prices: vec![(s11, d(100_000_000)), (s3, d(1_000_000))] },
            Command::Balance { account: 0, wallet: d(-2_500_000_000) },
            Command::Transfer { account: u64::MAX, amount: d(-100_000_000) },
            Command::Position {
                account: 7,
                symbol: s11,
                size: d(-123_400_000),
                entry_price: Some(d(6_000_001_000_000)),
                isolated_margin: Some(d(0)),
            },
            Command::Position {
                account: 8,
                symbol: s3,
                size: d(100_000),
                entry_price: Some(d(1_000_000)),
                isolated_margin: None,
            },
            // Closed: no entry price, no margin.
            Command::Position {
                account: 9,
                symbol: s3,
                size: D8::ZERO,
                entry_price: None,
                isolated_margin: None,
            },
            Command::MarginMode { account: 1, symbol: s3, mode: Mode::Isolated },
            Command::MarginMode { account: 1, symbol: s11, mode: Mode::Cross },
            Command::Leverage { account: 2, symbol: s11, leverage: 125 },
            Command::Orders { account: 3, symbol: s3, open_orders: 0, order_margin: D8::ZERO },
            Command::Orders { account: 3, symbol: s3, open_orders: 4, order_margin: d(5) },
            Command::IsolatedMargin { account: 4, symbol: s11, amount: d(-1_000_000) },
            Command::Funding { symbol: s11, rate: d(-50_000) },
            Command::Funding { symbol: s3, rate: D8::ZERO },
            Command::Query { account: 10_000_000_000 },
        ];
        for cmd in cases {
            let mut text = String::new();
            write_command(&mut text, &cfg, &cmd);
            let parsed = crate::protocol::parse_envelope(text.as_bytes())
                .unwrap_or_else(|r| panic!("{text}: {}", r.reason));
            let back = crate::protocol::validate(&parsed.envelope, &cfg)
                .unwrap_or_else(|r| panic!("{text}: {}", r.reason));
            assert_eq!(back, cmd, "{text}");
            assert!(!text.contains('\n') && text.starts_with("{\"type\":"), "{text}");
        }
        // The exact text of a few, as `liqscan gen` has always written them.
        let text = |cmd: &Command| {
            let mut text = String::new();
            write_command(&mut text, &cfg, cmd);
            text
        };
        assert_eq!(
            text(&Command::Orders {
                account: 3,
                symbol: s3,
                open_orders: 0,
                order_margin: D8::ZERO
            }),
            r#"{"type":"orders","account":3,"symbol":"S003","open_orders":0,"order_margin":"0"}"#
        );
        assert_eq!(
            text(&Command::Marks { prices: vec![(s11, d(100_000_000)), (s3, d(1_000_000))] }),
            r#"{"type":"marks","prices":{"S011":"1","S003":"0.01"}}"#
        );
        assert_eq!(
            text(&Command::Funding { symbol: s11, rate: d(-50_000) }),
            r#"{"type":"funding","symbol":"S011","rate":"-0.0005"}"#
        );
    }

    #[test]
    fn book_has_the_requested_positions() {
        let n = book_commands(1000, 3000, 50, 3)
            .filter(|c| matches!(c, Command::Position { .. }))
            .count();
        assert_eq!(n, 3000);
    }

    #[test]
    fn book_lines_replay_without_rejects() {
        let cfg = std::sync::Arc::new(config(10));
        let mut text = book_lines(200, 600, 10, 5);
        text += &mark_lines(10, 500, 5);
        let mut engine = crate::fast::FastEngine::new(cfg.clone());
        let summary =
            crate::replay::replay(cfg, &mut engine, text.as_bytes(), std::io::sink()).unwrap();
        assert_eq!(summary.rejects, 0);
        assert_eq!(engine.n_positions(), 600);
    }
}
