//! Exact decimal numbers as they arrive on the wire and in the config.
//!
//! Every decimal the SPEC accepts (section 1) has at most 8 fractional digits, so one
//! fixed-point type, [`D8`] (an `i128` counting units of 10^-8), holds every valid wire value
//! exactly. Text is parsed digit by digit: nothing ever passes through `f64`, and nothing is
//! silently rounded (a value with a 9th significant decimal is refused, not truncated).

use std::fmt;

/// 10^8, the scale of [`D8`].
pub const SCALE_D8: i128 = 100_000_000;

/// A decimal with at most 8 fractional digits: `raw / 10^8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct D8(pub i128);

/// A parsed decimal before any range check: `mantissa / 10^scale`, trailing zeros removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedDecimal {
    pub mantissa: i128,
    pub scale: u32,
}

/// Why a text is not a decimal of the accepted form `-?[0-9]+(\.[0-9]+)?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("is not a plain decimal of the form -?[0-9]+(.[0-9]+)?")]
    Form,
    #[error("has too many significant digits")]
    TooLong,
}

/// Parses the SPEC's decimal form exactly. Leading zeros of the integer part and trailing zeros
/// of the fraction are insignificant: `"007.50"` is 7.5 with scale 1.
pub fn parse_decimal(text: &str) -> Result<ParsedDecimal, DecimalError> {
    let bytes = text.as_bytes();
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    let (int_part, frac_part) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
        None => (digits, None),
    };
    if int_part.is_empty() || !int_part.iter().all(u8::is_ascii_digit) {
        return Err(DecimalError::Form);
    }
    let frac = match frac_part {
        Some(f) if f.is_empty() || !f.iter().all(u8::is_ascii_digit) => {
            return Err(DecimalError::Form);
        }
        Some(f) => f,
        None => &[][..],
    };
    let int_sig = trim_start_zeros(int_part);
    let frac_sig = trim_end_zeros(frac);
    // i128 holds any 38-digit number.
    if int_sig.len() + frac_sig.len() > 38 {
        return Err(DecimalError::TooLong);
    }
    let mut mantissa: i128 = 0;
    for &d in int_sig.iter().chain(frac_sig) {
        mantissa = mantissa * 10 + i128::from(d - b'0');
    }
    Ok(ParsedDecimal {
        mantissa: if negative { -mantissa } else { mantissa },
        scale: frac_sig.len() as u32,
    })
}

fn trim_start_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b'0').count();
    &s[n..]
}

fn trim_end_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|&&b| b == b'0').count();
    &s[..s.len() - n]
}

impl ParsedDecimal {
    /// The value as a [`D8`], or `None` when it has more than 8 significant decimals.
    pub fn to_d8(self) -> Option<D8> {
        if self.scale > 8 {
            return None;
        }
        let factor = 10i128.pow(8 - self.scale); // scale <= 8, checked above
        self.mantissa.checked_mul(factor).map(D8)
    }
}

impl D8 {
    pub const ZERO: D8 = D8(0);

    /// The integer `n` as a `D8`.
    pub const fn from_int(n: i64) -> D8 {
        // |n| < 2^63, times 10^8 < 2^90: fits i128.
        D8(n as i128 * SCALE_D8)
    }

    /// Parses a decimal that must have at most `max_decimals` significant fractional digits.
    pub fn parse(text: &str, max_decimals: u32) -> Result<D8, String> {
        let p = parse_decimal(text).map_err(|e| format!("\"{text}\" {e}"))?;
        if p.scale > max_decimals {
            return Err(format!("\"{text}\" has more than {max_decimals} decimal places"));
        }
        p.to_d8().ok_or_else(|| format!("\"{text}\" is out of range"))
    }

    /// Number of significant fractional digits (0..=8).
    pub fn decimals(self) -> u32 {
        let mut raw = self.0;
        let mut frac = 8;
        while frac > 0 && raw % 10 == 0 {
            raw /= 10;
            frac -= 1;
        }
        frac
    }

    pub fn abs(self) -> D8 {
        D8(self.0.abs())
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// True when `self` is an exact multiple of `unit` (which must be positive: ticks and
    /// steps are, by config validation; a zero unit panics).
    pub fn is_multiple_of(self, unit: D8) -> bool {
        debug_assert!(unit.0 > 0);
        self.0 % unit.0 == 0
    }
}

/// Formats `mantissa / 10^scale` as the shortest exact decimal: no exponent, no trailing
/// zeros, `"0"` for zero, never `"-0"`.
///
/// The text is assembled in a buffer on the stack and appended with one `push_str` (one
/// UTF-8 check of the whole text, not one per part); digits come two at a time from a table.
pub fn format_scaled(mantissa: i128, scale: u32, out: &mut String) {
    let mut buf = [b'0'; 39];
    let digits = decimal_digits(mantissa.unsigned_abs(), &mut buf);
    let scale = scale as usize;
    // What `format_digits` does, without its allocations: the integer part ("0" when every
    // digit is a fraction digit), then the fraction without its trailing zeros.
    let split = digits.len().saturating_sub(scale);
    let (int_part, frac_part) = digits.split_at(split);
    let lead = scale.saturating_sub(digits.len());
    let frac_end = frac_part.iter().rposition(|&d| d != b'0').map_or(0, |k| k + 1);
    // Sign, integer part (at most 39 digits), point, leading zeros, fraction.
    let mut text = [0u8; 128];
    let mut n = 0;
    fn put(text: &mut [u8; 128], n: &mut usize, bytes: &[u8]) {
        text[*n..*n + bytes.len()].copy_from_slice(bytes);
        *n += bytes.len();
    }
    // A non-zero mantissa has a non-zero digit, so it never prints as "-0".
    if mantissa < 0 {
        put(&mut text, &mut n, b"-");
    }
    put(&mut text, &mut n, if int_part.is_empty() { b"0" } else { int_part });
    if frac_end > 0 {
        // 1 + 39 + 1 + lead + 39 bytes: past 128 only for scales above 47, which no figure
        // has (the widest is q16); those take the zeros one push at a time.
        if n + 1 + lead + frac_end <= text.len() {
            put(&mut text, &mut n, b".");
            (0..lead).for_each(|_| put(&mut text, &mut n, b"0"));
        } else {
            out.push_str(ascii(&text[..n]));
            out.push('.');
            (0..lead).for_each(|_| out.push('0'));
            n = 0;
        }
        put(&mut text, &mut n, &frac_part[..frac_end]);
    }
    out.push_str(ascii(&text[..n]));
}

/// Appends the decimal digits of `v` (as `v.to_string()` would write them, without its
/// formatter machinery): the line numbers, seqs and latencies of events.
pub fn push_u64(out: &mut String, v: u64) {
    let mut buf = [b'0'; 39];
    out.push_str(ascii(decimal_digits(u128::from(v), &mut buf)));
}

/// The decimal digits of `v` (as [`push_u64`] writes them), written into `buf`.
pub fn u64_digits(v: u64, buf: &mut [u8; 39]) -> &[u8] {
    decimal_digits(u128::from(v), buf)
}

/// "00" "01" ... "99": two decimal digits per lookup.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// The decimal digits of `v` (no leading zeros; "0" for zero), written at the end of `buf`
/// (39 bytes hold `u128::MAX`). At most one 128-bit division: what is above 10^19 is
/// split off once, and each part is printed in 64-bit steps of two digits.
fn decimal_digits(v: u128, buf: &mut [u8; 39]) -> &[u8] {
    const E19: u128 = 10_000_000_000_000_000_000;
    fn put(mut v: u64, buf: &mut [u8], end: usize, min_digits: usize) -> usize {
        let mut i = end;
        while v >= 100 {
            let r = (v % 100) as usize;
            v /= 100;
            i -= 2;
            buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[2 * r..2 * r + 2]);
        }
        if v >= 10 {
            let r = v as usize;
            i -= 2;
            buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[2 * r..2 * r + 2]);
        } else if v > 0 {
            i -= 1;
            buf[i] = b'0' + v as u8;
        }
        while end - i < min_digits {
            i -= 1;
            buf[i] = b'0';
        }
        i
    }
    let start = if v < E19 {
        put(v as u64, buf, 39, 1)
    } else {
        let (hi, lo) = (v / E19, (v % E19) as u64);
        let mid = put(lo, buf, 39, 19);
        // hi = v / 10^19 <= u128::MAX / 10^19 < 2^65: split once more if it must be.
        match u64::try_from(hi) {
            Ok(hi) => put(hi, buf, mid, 1),
            Err(_) => {
                let (top, rest) = ((hi / E19) as u64, (hi % E19) as u64);
                let mid = put(rest, buf, mid, 19);
                put(top, buf, mid, 1)
            }
        }
    };
    &buf[start..]
}

fn ascii(digits: &[u8]) -> &str {
    // Only ASCII digits, '-' and '.' are written by `format_scaled`.
    std::str::from_utf8(digits).expect("ASCII digits")
}

/// Formats a decimal given as its sign and the digits of `|mantissa|`, with `scale` of them
/// after the point. Shared by [`D8`] and the wide exact type of the reference engine.
pub fn format_digits(negative: bool, digits: &str, scale: u32, out: &mut String) {
    let scale = scale as usize;
    let padded;
    let digits = if digits.len() <= scale {
        padded = format!("{}{digits}", "0".repeat(scale + 1 - digits.len()));
        padded.as_str()
    } else {
        digits
    };
    // Padded above to at least scale + 1 digits: the split is in range.
    let (int_part, frac_part) = digits.split_at(digits.len() - scale);
    let frac_part = frac_part.trim_end_matches('0');
    if negative && !(int_part.bytes().all(|b| b == b'0') && frac_part.is_empty()) {
        out.push('-');
    }
    out.push_str(int_part);
    if !frac_part.is_empty() {
        out.push('.');
        out.push_str(frac_part);
    }
}

/// `mantissa / 10^scale` as a string (see [`format_scaled`]).
pub fn scaled_text(mantissa: i128, scale: u32) -> String {
    // Sign, 39 digits, a point and a leading "0.": one allocation.
    let mut s = String::with_capacity(43 + scale as usize);
    format_scaled(mantissa, scale, &mut s);
    s
}

impl fmt::Display for D8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&scaled_text(self.0, 8))
    }
}

impl D8 {
    /// The text of `self` (as `to_string`, with one allocation instead of two).
    pub fn text(self) -> String {
        scaled_text(self.0, 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_the_plain_form_exactly() {
        // (text, mantissa, scale)
        let cases = [
            ("0", 0, 0),
            ("-0", 0, 0),
            ("65000.1", 650001, 1),
            ("007.50", 75, 1),
            ("-0.00000001", -1, 8),
            ("123456789012345678901234567890", 123456789012345678901234567890, 0),
            ("0.1000000000000000000000000000000000000000", 1, 1),
        ];
        for (text, m, s) in cases {
            let p = parse_decimal(text).unwrap();
            assert_eq!((p.mantissa, p.scale), (m, s), "{text}");
        }
    }

    #[test]
    fn parse_refuses_everything_else() {
        for text in [
            "", "-", ".5", "5.", "1e3", "1E3", "+1", "NaN", "Infinity", " 1", "1 ", "1.2.3",
            "0x10", "--1", "1,5",
        ] {
            assert_eq!(parse_decimal(text), Err(DecimalError::Form), "{text:?}");
        }
        assert_eq!(
            parse_decimal("1234567890123456789012345678901234567890"),
            Err(DecimalError::TooLong)
        );
    }

    #[test]
    fn d8_refuses_a_ninth_decimal_instead_of_rounding() {
        assert!(D8::parse("1.000000001", 8).is_err());
        assert_eq!(D8::parse("1.000000010", 8), Ok(D8(100_000_001)));
        assert!(D8::parse("0.123", 2).is_err());
    }

    #[test]
    fn format_round_trips() {
        for text in ["0", "1", "-1", "0.5", "-0.00000001", "65000.1", "999999999.99999999"] {
            let d = D8::parse(text, 8).unwrap();
            assert_eq!(d.to_string(), text);
        }
        let mut s = String::new();
        format_scaled(-5, 20, &mut s);
        assert_eq!(s, "-0.00000000000000000005");
    }

    /// The 64-bit formatter equals the general one (`to_string` of the magnitude, then
    /// `format_digits`) around powers of ten, at the extremes and at random, at every scale.
    #[test]
    fn format_scaled_equals_the_general_formatter() {
        let mut rng = crate::synth::Rng::new(8);
        let mut cases = vec![0i128, 1, -1, i128::MAX, i128::MIN + 1, -i128::MAX, i128::MIN];
        for k in 0..39 {
            let p = 10i128.pow(k);
            cases.extend([p, p - 1, p + 1, -p, 1 - p, -p - 1, p / 2 + 3, -(p / 3)]);
        }
        for _ in 0..20_000 {
            let v = (i128::from(rng.below(u64::MAX)) << rng.below(64)) + rng.below(1000) as i128;
            cases.extend([v, -v, v / 1000 * 1000]);
        }
        for v in cases {
            // 60 and 100 take the path for texts longer than the stack buffer.
            for scale in [0, 1, 8, 12, 16, 20, 38, 40, 60, 100] {
                let mut want = String::new();
                let digits = v.unsigned_abs().to_string();
                format_digits(v < 0, &digits, scale, &mut want);
                let mut got = String::new();
                format_scaled(v, scale, &mut got);
                assert_eq!(got, want, "{v} at scale {scale}");
            }
        }
        assert_eq!(D8(-5).text(), "-0.00000005");
        assert_eq!(D8(123_000_000).to_string(), "1.23");
    }

    /// The texts events carry (e8 amounts and prices, q16 figures, n12 notionals) equal the
    /// exact decimal's (`exact::Exact`, big integers): zero, signs, every count of
    /// decimals, and the largest magnitudes the config and the SPEC allow (amounts below
    /// 10^18, prices below 10^9, and the q16 sum of 65,535 such terms).
    #[test]
    fn event_texts_equal_the_exact_decimal() {
        use crate::exact::Exact;
        let e8 = |v: i128| Exact::from_d8(D8(v));
        // v / 10^16 and v / 10^12, as exact products (no rounding: at most 20 decimals).
        let q16 = |v: i128| &e8(v) * &e8(1);
        let n12 = |v: i128| &e8(v) * &e8(10_000);
        let amount_max = crate::protocol::AMOUNT_LIMIT.0 - 1;
        let price_max = crate::protocol::PRICE_LIMIT - 1;
        let mut cases =
            vec![0, 1, -1, 12_345_678, -99_999_999, 100_000_000, amount_max, -amount_max];
        cases.extend([price_max, -price_max, 10i128.pow(18), 10i128.pow(19) - 1, 10i128.pow(19)]);
        // A cross account's q16 total: 65,535 terms, each below 10^33 (src/fast/README.md).
        cases.extend([65_535 * 10i128.pow(33) - 1, -(65_535 * 10i128.pow(33)) + 7]);
        let mut rng = crate::synth::Rng::new(14);
        for _ in 0..5_000 {
            let v = (i128::from(rng.below(u64::MAX)) << rng.below(50)) - (1 << 40);
            cases.push(v);
        }
        for v in cases {
            assert_eq!(D8(v).text(), e8(v).to_string(), "{v} e8");
            assert_eq!(scaled_text(v, 8), e8(v).to_string(), "{v} e8");
            assert_eq!(scaled_text(v, 16), q16(v).to_string(), "{v} q16");
            assert_eq!(scaled_text(v, 12), n12(v).to_string(), "{v} n12");
            let mut appended = String::from("x");
            format_scaled(v, 16, &mut appended);
            assert_eq!(appended, format!("x{}", q16(v)), "{v} appended");
        }
    }

    #[test]
    fn push_u64_equals_to_string() {
        let mut cases = vec![0, 1, 9, 10, 99, 100, 101, u64::MAX, u64::MAX - 1];
        cases.extend((0..20).flat_map(|k| {
            let p = 10u64.pow(k);
            [p - 1, p, p + 1]
        }));
        let mut rng = crate::synth::Rng::new(3);
        cases.extend((0..10_000).map(|_| rng.below(u64::MAX) >> rng.below(64)));
        for v in cases {
            let mut s = String::from("x");
            push_u64(&mut s, v);
            assert_eq!(s, format!("x{v}"));
        }
    }

    #[test]
    fn decimals_counts_significant_digits() {
        assert_eq!(D8::parse("0.1", 8).unwrap().decimals(), 1);
        assert_eq!(D8::parse("100", 8).unwrap().decimals(), 0);
        assert_eq!(D8::parse("0.00000001", 8).unwrap().decimals(), 8);
    }
}
