//! The risk config of SPEC section 2: symbols, tick and step sizes, maintenance brackets.
//!
//! Loading validates every rule and derives each bracket's maintenance amount (`cum`); a
//! broken rule is a [`ConfigError`] naming the symbol, the bracket and the rule.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::fixed::{D8, SCALE_D8};

/// The most symbols a config may hold (SPEC section 2): a [`SymbolIdx`] is a `u16`, and the
/// fast engine counts an account's cross positions (at most one per symbol) in a `u16`.
pub const MAX_SYMBOLS: usize = 65_535;
/// `tick_size` is below this (SPEC section 2): prices are below 10^9 too.
pub const TICK_SIZE_LIMIT: D8 = D8::from_int(1_000_000_000);
/// `step_size` is below this (SPEC section 2): sizes are below 10^8 too.
pub const STEP_SIZE_LIMIT: D8 = D8::from_int(100_000_000);
/// `notional_cap` is below this (SPEC section 2).
pub const CAP_LIMIT: D8 = D8::from_int(1_000_000_000_000_000);

/// Dense index of a symbol, assigned in config order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SymbolIdx(pub u16);

/// Margin mode of an (account, symbol) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Cross,
    Isolated,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cross => "cross",
            Mode::Isolated => "isolated",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "cross" => Some(Mode::Cross),
            "isolated" => Some(Mode::Isolated),
            _ => None,
        }
    }
}

/// One maintenance bracket: notionals in `[floor, cap)` (the last one also above its cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bracket {
    pub floor: D8,
    pub cap: D8,
    pub max_leverage: u32,
    /// Maintenance margin rate, at most 4 decimals.
    pub mmr: D8,
    /// Maintenance amount `cum_k`, at most 6 decimals.
    pub cum: D8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub tick_size: D8,
    pub step_size: D8,
    pub brackets: Vec<Bracket>,
}

impl Symbol {
    /// The index of the bracket holding `notional`: the first with `notional < cap`, else the
    /// last. Generic over the caller's number type through the comparison it supplies.
    pub fn bracket_index_by(&self, below_cap: impl Fn(D8) -> bool) -> usize {
        // A loaded symbol has at least one bracket (checked in `Symbol::from_raw`).
        self.brackets.iter().position(|b| below_cap(b.cap)).unwrap_or(self.brackets.len() - 1)
    }

    /// The bracket holding an exact 8-decimal notional.
    pub fn bracket_for_d8(&self, notional: D8) -> &Bracket {
        &self.brackets[self.bracket_index_by(|cap| notional < cap)]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub default_margin_mode: Mode,
    pub default_leverage: u32,
    pub symbols: Vec<Symbol>,
    index: HashMap<String, SymbolIdx>,
}

/// The largest config file [`Config::load`] reads: 65,535 symbols with a dozen brackets each
/// take about 100 MiB of JSON.
pub const MAX_CONFIG_BYTES: u64 = 256 << 20;

/// A config rule that does not hold. The message names the symbol and bracket where it can.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Bad JSON, or JSON of the wrong shape (a missing, unknown or mistyped field).
    #[error("config is not valid JSON or not a config: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Rule(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig<'a> {
    #[serde(borrow)]
    default_margin_mode: &'a RawValue,
    #[serde(borrow)]
    default_leverage: &'a RawValue,
    #[serde(borrow)]
    symbols: Vec<RawSymbol<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSymbol<'a> {
    symbol: String,
    #[serde(borrow)]
    tick_size: &'a RawValue,
    #[serde(borrow)]
    step_size: &'a RawValue,
    #[serde(borrow)]
    brackets: Vec<RawBracket<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBracket<'a> {
    #[serde(borrow)]
    notional_cap: &'a RawValue,
    #[serde(borrow)]
    max_leverage: &'a RawValue,
    #[serde(borrow)]
    mmr: &'a RawValue,
    #[serde(borrow, default)]
    maintenance_amount: Option<&'a RawValue>,
}

/// The text of a JSON string or number, for the decimal parser.
fn decimal_text(raw: &RawValue) -> Option<String> {
    let t = raw.get();
    if t.starts_with('"') { serde_json::from_str::<String>(t).ok() } else { Some(t.to_string()) }
}

/// A JSON integer >= 1 of any size (leverages), saturated to `u32::MAX`: SPEC section 2
/// bounds neither, and every use takes a minimum with a bracket's `max_leverage`, which the
/// `mmr` rules keep below 10^4 (`mmr >= 0.0001` and `mmr * max_leverage < 1`).
fn positive_int(raw: &RawValue) -> Option<u32> {
    let t = raw.get();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = t.trim_start_matches('0');
    if digits.is_empty() {
        return None; // zero
    }
    Some(digits.parse::<u32>().unwrap_or(u32::MAX))
}

impl Config {
    /// Reads and validates the config at `path`. Errors: the file cannot be read, is over
    /// [`MAX_CONFIG_BYTES`] (so `/dev/zero` or a wrong path to a huge file fails fast, not by
    /// exhausting memory), or breaks a rule of SPEC section 2.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read as _;
        let io = |source| ConfigError::Io { path: path.display().to_string(), source };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
            .map_err(io)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::Rule(format!(
                "config file is over {} MiB",
                MAX_CONFIG_BYTES >> 20
            )));
        }
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_str(text)?;
        let rule = |msg: String| ConfigError::Rule(msg);
        let default_margin_mode = serde_json::from_str::<String>(raw.default_margin_mode.get())
            .ok()
            .and_then(|s| Mode::parse(&s))
            .ok_or_else(|| rule("default_margin_mode must be \"cross\" or \"isolated\"".into()))?;
        let default_leverage = positive_int(raw.default_leverage)
            .ok_or_else(|| rule("default_leverage must be an integer >= 1".into()))?;
        if raw.symbols.is_empty() {
            return Err(rule("symbols must list at least one symbol".into()));
        }
        if raw.symbols.len() > MAX_SYMBOLS {
            return Err(rule(format!(
                "symbols lists {} symbols; at most {MAX_SYMBOLS} are allowed",
                raw.symbols.len()
            )));
        }
        let mut symbols = Vec::with_capacity(raw.symbols.len());
        let mut index = HashMap::new();
        for rs in raw.symbols {
            let sym = Symbol::from_raw(rs).map_err(rule)?;
            if sym.name.is_empty() {
                return Err(rule("a symbol has an empty name".into()));
            }
            // Below MAX_SYMBOLS (checked above), so every index fits u16.
            let idx = SymbolIdx(symbols.len() as u16);
            if index.insert(sym.name.clone(), idx).is_some() {
                return Err(rule(format!("symbol {}: listed twice", sym.name)));
            }
            symbols.push(sym);
        }
        Ok(Config { default_margin_mode, default_leverage, symbols, index })
    }

    pub fn symbol_idx(&self, name: &str) -> Option<SymbolIdx> {
        self.index.get(name).copied()
    }

    /// The symbol of an index this config gave out ([`Config::symbol_idx`]); an index from
    /// another config may panic.
    pub fn symbol(&self, idx: SymbolIdx) -> &Symbol {
        &self.symbols[idx.0 as usize]
    }

    /// Leverage of a pair whose leverage was never set:
    /// `min(default_leverage, max_leverage of the first bracket)`.
    pub fn default_leverage_for(&self, idx: SymbolIdx) -> u32 {
        // Every loaded symbol has a first bracket.
        self.default_leverage.min(self.symbol(idx).brackets[0].max_leverage)
    }
}

impl Symbol {
    fn from_raw(rs: RawSymbol<'_>) -> Result<Symbol, String> {
        let name = rs.symbol;
        let dec = |what: &str, raw: &RawValue, max_decimals: u32| -> Result<D8, String> {
            let text = decimal_text(raw)
                .ok_or_else(|| format!("symbol {name}: {what} must be a decimal"))?;
            D8::parse(&text, max_decimals).map_err(|e| format!("symbol {name}: {what} {e}"))
        };
        let tick_size = dec("tick_size", rs.tick_size, 8)?;
        let step_size = dec("step_size", rs.step_size, 8)?;
        if tick_size.0 <= 0 || step_size.0 <= 0 {
            return Err(format!("symbol {name}: tick_size and step_size must be positive"));
        }
        if tick_size >= TICK_SIZE_LIMIT {
            return Err(format!("symbol {name}: tick_size {tick_size} must be below 10^9"));
        }
        if step_size >= STEP_SIZE_LIMIT {
            return Err(format!("symbol {name}: step_size {step_size} must be below 10^8"));
        }
        if tick_size.decimals() + step_size.decimals() > 12 {
            return Err(format!(
                "symbol {name}: tick_size and step_size decimals add up to more than 12"
            ));
        }
        if rs.brackets.is_empty() {
            return Err(format!("symbol {name}: needs at least one bracket"));
        }
        let mut brackets: Vec<Bracket> = Vec::with_capacity(rs.brackets.len());
        for (k, rb) in rs.brackets.into_iter().enumerate() {
            let at = |rule: &str| format!("symbol {name}, bracket {k}: {rule}");
            let cap = dec("notional_cap", rb.notional_cap, 2).map_err(|e| at(&e))?;
            if cap.0 <= 0 || cap >= CAP_LIMIT {
                return Err(at("notional_cap must be > 0 and below 10^15"));
            }
            let max_leverage = positive_int(rb.max_leverage)
                .ok_or_else(|| at("max_leverage must be an integer >= 1"))?;
            let mmr = dec("mmr", rb.mmr, 4).map_err(|e| at(&e))?;
            if mmr.0 <= 0 || mmr.0 >= SCALE_D8 {
                return Err(at("mmr must satisfy 0 < mmr < 1"));
            }
            // mmr < 1 / max_leverage  <=>  mmr * max_leverage < 1 (at most 10^8 * 2^32: no
            // overflow)
            if mmr.0 * i128::from(max_leverage) >= SCALE_D8 {
                return Err(at("mmr must be below 1/max_leverage"));
            }
            let (floor, cum) = match brackets.last() {
                None => (D8::ZERO, D8::ZERO),
                Some(prev) => {
                    if cap <= prev.cap {
                        return Err(at("notional_cap must be strictly increasing"));
                    }
                    if mmr < prev.mmr {
                        return Err(at("mmr must be non-decreasing"));
                    }
                    if max_leverage > prev.max_leverage {
                        return Err(at("max_leverage must be non-increasing"));
                    }
                    // cum_k = cum_(k-1) + floor_k * (mmr_k - mmr_(k-1)); floor has 2
                    // decimals and the rates 4, so the product has 6: exact in D8. Caps are
                    // below 10^23 raw and rates below 10^8 raw: the product fits i128, and
                    // cum_k < cap_(k-1) * mmr_(k-1) < 10^15.
                    let step = prev.cap.0 * (mmr.0 - prev.mmr.0);
                    debug_assert_eq!(step % SCALE_D8, 0);
                    (prev.cap, D8(prev.cum.0 + step / SCALE_D8))
                }
            };
            if let Some(stated) = rb.maintenance_amount {
                let stated = dec("maintenance_amount", stated, 8).map_err(|e| at(&e))?;
                if stated != cum {
                    return Err(at(&format!(
                        "maintenance_amount {stated} differs from the derived value {cum}"
                    )));
                }
            }
            brackets.push(Bracket { floor, cap, max_leverage, mmr, cum });
        }
        Ok(Symbol { name, tick_size, step_size, brackets })
    }
}

/// Test fixture: BTCUSDT with three brackets, [0, 50000) 125x 0.4 %, [50000, 250000) 100x
/// 0.5 % (cum 50), [250000, ...) 50x 1 % (cum 1300); tick 0.1, step 0.001.
#[cfg(test)]
pub(crate) fn three_bracket_btc() -> Symbol {
    Config::parse(
        r#"{"default_margin_mode":"cross","default_leverage":20,"symbols":[
        {"symbol":"BTCUSDT","tick_size":"0.1","step_size":"0.001","brackets":[
        {"notional_cap":"50000","max_leverage":125,"mmr":"0.004"},
        {"notional_cap":"250000","max_leverage":100,"mmr":"0.005"},
        {"notional_cap":"1000000","max_leverage":50,"mmr":"0.01"}]}]}"#,
    )
    .unwrap()
    .symbols
    .remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_brackets(brackets: &str) -> String {
        format!(
            r#"{{"default_margin_mode":"cross","default_leverage":20,"symbols":[
            {{"symbol":"X","tick_size":"0.1","step_size":"0.001","brackets":[{brackets}]}}]}}"#
        )
    }

    /// Bad JSON and valid JSON of the wrong shape both say what is wrong; the second is not
    /// called bad JSON alone.
    #[test]
    fn a_config_of_the_wrong_shape_names_the_field() {
        let missing = Config::parse(r#"{"symbols":[]}"#).unwrap_err().to_string();
        assert!(missing.contains("not a config"), "{missing}");
        assert!(missing.contains("missing field `default_margin_mode`"), "{missing}");
        let broken = Config::parse(r#"{"symbols":"#).unwrap_err().to_string();
        assert!(broken.starts_with("config is not valid JSON"), "{broken}");
    }

    #[test]
    fn maintenance_amounts_of_a_ten_bracket_table() {
        // Hand-computed: cum_k = cum_(k-1) + floor_k * (mmr_k - mmr_(k-1)).
        // (cap, max_lev, mmr, expected cum)
        let table = [
            ("10000", 125, "0.004", "0"),
            ("50000", 100, "0.005", "10"),       // 0 + 10000*0.001
            ("250000", 50, "0.01", "260"),       // 10 + 50000*0.005
            ("1000000", 20, "0.025", "4010"),    // 260 + 250000*0.015
            ("2000000", 10, "0.05", "29010"),    // 4010 + 1000000*0.025
            ("5000000", 5, "0.1", "129010"),     // 29010 + 2000000*0.05
            ("10000000", 4, "0.125", "254010"),  // 129010 + 5000000*0.025
            ("20000000", 3, "0.15", "504010"),   // 254010 + 10000000*0.025
            ("50000000", 2, "0.25", "2504010"),  // 504010 + 20000000*0.1
            ("100000000", 1, "0.5", "15004010"), // 2504010 + 50000000*0.25
        ];
        let brackets: Vec<String> = table
            .iter()
            .map(|(cap, lev, mmr, _)| {
                format!(r#"{{"notional_cap":"{cap}","max_leverage":{lev},"mmr":"{mmr}"}}"#)
            })
            .collect();
        let cfg = Config::parse(&config_with_brackets(&brackets.join(","))).unwrap();
        let got: Vec<String> = cfg.symbols[0].brackets.iter().map(|b| b.cum.to_string()).collect();
        let want: Vec<&str> = table.iter().map(|t| t.3).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn each_broken_rule_is_named() {
        let b = |cap: &str, lev: u32, mmr: &str| {
            format!(r#"{{"notional_cap":"{cap}","max_leverage":{lev},"mmr":"{mmr}"}}"#)
        };
        // (label, brackets, expected fragment of the message)
        let cases = [
            (
                "TC1 caps",
                format!("{},{}", b("100", 10, "0.01"), b("100", 5, "0.02")),
                "strictly increasing",
            ),
            (
                "TC2 mmr",
                format!("{},{}", b("100", 10, "0.02"), b("200", 5, "0.01")),
                "non-decreasing",
            ),
            (
                "TC3 lev",
                format!("{},{}", b("100", 10, "0.01"), b("200", 20, "0.02")),
                "non-increasing",
            ),
            ("TC4 1/lev", b("100", 100, "0.01"), "below 1/max_leverage"),
            ("TC5 mmr>=1", b("100", 1, "1"), "0 < mmr < 1"),
            ("TC6 mmr decimals", b("100", 10, "0.00001"), "more than 4 decimal places"),
            ("TC7 cap decimals", b("100.001", 10, "0.01"), "more than 2 decimal places"),
            ("TC8 lev 0", b("100", 0, "0.01"), "max_leverage must be an integer"),
            ("TC9 cap too big", b("1000000000000000", 10, "0.01"), "below 10^15"),
        ];
        for (label, brackets, fragment) in cases {
            let err = Config::parse(&config_with_brackets(&brackets)).unwrap_err().to_string();
            assert!(err.contains(fragment), "{label}: {err}");
            assert!(err.contains("symbol X"), "{label}: {err}");
        }
        let err = Config::parse(&config_with_brackets(&format!(
            "{},{}",
            b("100", 10, "0.01"),
            r#"{"notional_cap":"200","max_leverage":5,"mmr":"0.02","maintenance_amount":"2"}"#
        )))
        .unwrap_err()
        .to_string();
        assert!(err.contains("bracket 1") && err.contains("derived value 1"), "{err}");
    }

    #[test]
    fn tick_and_step_decimals_are_bounded() {
        let text = r#"{"default_margin_mode":"isolated","default_leverage":5,"symbols":[
            {"symbol":"Y","tick_size":"0.0000001","step_size":"0.000001","brackets":[
            {"notional_cap":"100","max_leverage":10,"mmr":"0.01"}]}]}"#;
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(err.contains("more than 12"), "{err}");
    }

    fn config_with_symbol(tick: &str, step: &str, bracket: &str) -> String {
        format!(
            r#"{{"default_margin_mode":"cross","default_leverage":20,"symbols":[
            {{"symbol":"Z","tick_size":"{tick}","step_size":"{step}","brackets":[{bracket}]}}]}}"#
        )
    }

    #[test]
    fn every_limit_is_accepted_at_the_limit_and_refused_one_step_past() {
        let one = r#"{"notional_cap":"100","max_leverage":10,"mmr":"0.01"}"#;
        // (label, tick, step, bracket, expected: None = accepted, Some(fragment) = refused)
        let cases = [
            ("TC1 largest tick", "999999999.9999", "0.00000001", one, None),
            (
                "TC2 tick 10^9",
                "1000000000",
                "1",
                one,
                Some("tick_size 1000000000 must be below 10^9"),
            ),
            ("TC3 largest step", "0.0001", "99999999.99999999", one, None),
            (
                "TC4 step 10^8",
                "1",
                "100000000",
                one,
                Some("step_size 100000000 must be below 10^8"),
            ),
            ("TC5 step 10^11", "1", "100000000000", one, Some("must be below 10^8")),
            ("TC6 decimals 12", "0.00000001", "0.0001", one, None),
            ("TC7 decimals 13", "0.00000001", "0.00001", one, Some("more than 12")),
            ("TC8 tick 9 decimals", "0.000000001", "1", one, Some("more than 8 decimal places")),
            ("TC9 zero step", "1", "0", one, Some("must be positive")),
            (
                "TC10 largest cap",
                "1",
                "1",
                r#"{"notional_cap":"999999999999999.99","max_leverage":1,"mmr":"0.9999"}"#,
                None,
            ),
            (
                "TC11 cap 10^15",
                "1",
                "1",
                r#"{"notional_cap":"1000000000000000","max_leverage":1,"mmr":"0.5"}"#,
                Some("bracket 0: notional_cap must be > 0 and below 10^15"),
            ),
            (
                "TC12 largest leverage",
                "1",
                "1",
                r#"{"notional_cap":"1","max_leverage":9999,"mmr":"0.0001"}"#,
                None,
            ),
            (
                "TC13 leverage 10^4 at the smallest mmr",
                "1",
                "1",
                r#"{"notional_cap":"1","max_leverage":10000,"mmr":"0.0001"}"#,
                Some("below 1/max_leverage"),
            ),
            (
                "TC14 leverage beyond u64",
                "1",
                "1",
                r#"{"notional_cap":"1","max_leverage":123456789012345678901234567890,"mmr":"0.0001"}"#,
                Some("below 1/max_leverage"),
            ),
        ];
        for (label, tick, step, bracket, want) in cases {
            let got = Config::parse(&config_with_symbol(tick, step, bracket));
            match (want, got) {
                (None, Ok(_)) => {}
                (None, Err(e)) => panic!("{label}: refused: {e}"),
                (Some(_), Ok(_)) => panic!("{label}: accepted"),
                (Some(fragment), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains(fragment) && e.contains("symbol Z"), "{label}: {e}");
                }
            }
        }
    }

    #[test]
    fn default_leverage_is_any_integer_from_1() {
        let text = |lev: &str| {
            format!(
                r#"{{"default_margin_mode":"cross","default_leverage":{lev},"symbols":[
                {{"symbol":"Z","tick_size":"1","step_size":"1","brackets":[
                {{"notional_cap":"100","max_leverage":10,"mmr":"0.01"}}]}}]}}"#
            )
        };
        // (label, default_leverage, the leverage of a pair never set)
        for (label, lev, want) in [
            ("TC1 one", "1", 1),
            ("TC2 below the bracket", "7", 7),
            ("TC3 u32::MAX + 1", "4294967296", 10),
            ("TC4 beyond u64", "100000000000000000000000000000000000000000", 10),
        ] {
            let cfg = Config::parse(&text(lev)).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(cfg.default_leverage_for(SymbolIdx(0)), want, "{label}");
        }
        for bad in ["0", "-1", "1.5", "\"20\"", "1e3"] {
            let err = Config::parse(&text(bad)).unwrap_err().to_string();
            assert!(err.contains("default_leverage must be an integer >= 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn symbol_count_is_bounded() {
        let symbols = |n: usize| -> String {
            let list: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        r#"{{"symbol":"S{i}","tick_size":"1","step_size":"1","brackets":[{{"notional_cap":"100","max_leverage":10,"mmr":"0.01"}}]}}"#
                    )
                })
                .collect();
            format!(
                r#"{{"default_margin_mode":"cross","default_leverage":20,"symbols":[{}]}}"#,
                list.join(",")
            )
        };
        let cfg = Config::parse(&symbols(MAX_SYMBOLS)).unwrap();
        assert_eq!(cfg.symbol_idx("S65534"), Some(SymbolIdx(65_534)));
        let err = Config::parse(&symbols(MAX_SYMBOLS + 1)).unwrap_err().to_string();
        assert!(err.contains("65536 symbols; at most 65535"), "{err}");
    }

    #[test]
    fn default_leverage_is_capped_by_the_first_bracket() {
        let cfg = Config::parse(&config_with_brackets(
            r#"{"notional_cap":"100","max_leverage":10,"mmr":"0.01"}"#,
        ))
        .unwrap();
        assert_eq!(cfg.default_leverage_for(SymbolIdx(0)), 10);
    }
}
