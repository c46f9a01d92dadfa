//! [`Exact`]: an unbounded decimal at a fixed scale of 10^-20, the number type of the
//! reference engine.
//!
//! SPEC section 1 says every single quantity of section 4 is exact at scale 10^-20, but also
//! that `rust_decimal`'s 28 significant digits do not cover the extremes (a notional of
//! 10^17 with 12 decimals already needs 29). Sums over many positions and the outputs
//! (a margin ratio of a nearly empty account can exceed 10^30) do not fit any fixed width
//! either, so the reference uses an arbitrary-precision integer: it cannot overflow and
//! cannot round, which is what "obviously correct" needs. The only roundings are the named
//! ones, [`Exact::ceil8`] and [`Exact::round8`], plus the rational ones in [`round8_ratio`].

use std::{
    cmp::Ordering,
    fmt,
    ops::{Add, Mul, Neg, Sub},
    sync::LazyLock,
};

use num_bigint::BigInt;
use num_integer::Integer;
use num_traits::{Signed, Zero};

use crate::{
    fixed::{D8, format_digits},
    protocol::Amount,
};

/// Decimal places of [`Exact`].
pub const SCALE: u32 = 20;

/// 10^n for n <= SCALE, computed once (a big-integer power allocates and multiplies, and the
/// event path needs several per position).
fn pow10(n: u32) -> &'static BigInt {
    static POWERS: LazyLock<Vec<BigInt>> =
        LazyLock::new(|| (0..=SCALE).map(|k| BigInt::from(10u8).pow(k)).collect());
    // Callers pass the constants 8, SCALE - 8 and SCALE: in range.
    &POWERS[n as usize]
}

/// `raw / 10^20`, exact and unbounded.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Exact(BigInt);

impl Exact {
    pub fn zero() -> Exact {
        Exact(BigInt::zero())
    }

    pub fn from_d8(d: D8) -> Exact {
        Exact(BigInt::from(d.0) * pow10(SCALE - 8))
    }

    pub fn from_int(n: i128) -> Exact {
        Exact(BigInt::from(n) * pow10(SCALE))
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    pub fn is_positive(&self) -> bool {
        self.0.is_positive()
    }

    pub fn abs(&self) -> Exact {
        Exact(self.0.abs())
    }

    pub fn signum(&self) -> i32 {
        match self.0.sign() {
            num_bigint::Sign::Minus => -1,
            num_bigint::Sign::NoSign => 0,
            num_bigint::Sign::Plus => 1,
        }
    }

    /// The smallest multiple of 10^-8 that is >= self.
    pub fn ceil8(&self) -> Exact {
        let unit = pow10(SCALE - 8);
        Exact(self.0.div_ceil(unit) * unit)
    }

    /// Self rounded to 8 decimals, ties to even.
    pub fn round8(&self) -> Exact {
        let unit = pow10(SCALE - 8);
        Exact(div_round_half_even(&self.0, unit) * unit)
    }

    /// `ceil8(self / n)` for a positive integer `n` (initial margin).
    pub fn div_int_ceil8(&self, n: u64) -> Exact {
        // Leverages are >= 1: a message's by validation, a default by the config's rules.
        assert!(n > 0, "division by a non-positive leverage");
        let unit = pow10(SCALE - 8) * BigInt::from(n);
        Exact(self.0.div_ceil(&unit) * pow10(SCALE - 8))
    }

    /// The value as a `D8` when it has at most 8 decimals and fits.
    pub fn to_d8(&self) -> Option<D8> {
        let (q, r) = self.0.div_rem(pow10(SCALE - 8));
        if !r.is_zero() {
            return None;
        }
        i128::try_from(q).ok().map(D8)
    }

    /// The raw integer (units of 10^-20).
    pub fn raw(&self) -> &BigInt {
        &self.0
    }

    /// The value as an event figure: `raw / 10^20` when the raw integer fits an `i128`
    /// (every amount, price and q16 total the SPEC allows), else the same value with its
    /// trailing zeros taken off the mantissa when that fits, else its text (a ratio near the
    /// limits). Exact in every case: the event prints the same text as `Display`.
    pub fn amount(&self) -> Amount {
        if let Ok(m) = i128::try_from(&self.0) {
            return Amount::scaled(m, SCALE as u8);
        }
        let (mut m, mut scale) = (self.0.clone(), SCALE);
        let ten = BigInt::from(10u8);
        while scale > 0 && (&m % &ten).is_zero() {
            m /= &ten;
            scale -= 1;
        }
        match i128::try_from(&m) {
            Ok(m) => Amount::scaled(m, scale as u8),
            Err(_) => Amount::wide(self.to_string()),
        }
    }
}

/// `round8(num / den)` as an exact value, ties to even; `den` must not be zero.
pub fn round8_ratio(num: &Exact, den: &Exact) -> Exact {
    // Callers divide by a positive margin balance, or by a liquidation slope that mmr < 1
    // keeps non-zero.
    assert!(!den.is_zero(), "ratio with a zero denominator");
    // num/den in units of 10^-8 is num * 10^8 / den.
    let q = div_round_half_even(&(&num.0 * pow10(8)), &den.0);
    Exact(q * pow10(SCALE - 8))
}

/// `a / b` rounded to the nearest integer, ties to even.
fn div_round_half_even(a: &BigInt, b: &BigInt) -> BigInt {
    let (a, b) = if b.is_negative() { (-a, -b) } else { (a.clone(), b.clone()) };
    let (q, r) = a.div_mod_floor(&b);
    // 0 <= r < b; compare 2r with b.
    match (r * 2u8).cmp(&b) {
        Ordering::Less => q,
        Ordering::Greater => q + 1u8,
        Ordering::Equal if q.is_even() => q,
        Ordering::Equal => q + 1u8,
    }
}

impl Add for &Exact {
    type Output = Exact;
    fn add(self, rhs: &Exact) -> Exact {
        Exact(&self.0 + &rhs.0)
    }
}

impl Sub for &Exact {
    type Output = Exact;
    fn sub(self, rhs: &Exact) -> Exact {
        Exact(&self.0 - &rhs.0)
    }
}

impl Mul for &Exact {
    type Output = Exact;
    /// Exact product. Every product the SPEC forms has at most 20 decimals; a product that
    /// does not is a bug in the caller, and rounding it silently would hide that.
    fn mul(self, rhs: &Exact) -> Exact {
        let (q, r) = (&self.0 * &rhs.0).div_rem(pow10(SCALE));
        // Within SPEC sections 1 and 2 no product needs more: size * price at most 8 + 8
        // decimals, notional (tick + step <= 12) * mmr (4) 16, notional * funding rate (8)
        // 20. Config validation enforces the decimal counts.
        assert!(r.is_zero(), "product needs more than {SCALE} decimals");
        Exact(q)
    }
}

impl Neg for &Exact {
    type Output = Exact;
    fn neg(self) -> Exact {
        Exact(-&self.0)
    }
}

impl std::iter::Sum for Exact {
    fn sum<I: Iterator<Item = Exact>>(iter: I) -> Exact {
        Exact(iter.map(|e| e.0).sum())
    }
}

impl fmt::Display for Exact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        format_digits(self.0.is_negative(), &self.0.abs().to_string(), SCALE, &mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Exact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Exact({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(s: &str) -> Exact {
        let p = crate::fixed::parse_decimal(s).unwrap();
        Exact(BigInt::from(p.mantissa) * pow10(SCALE - p.scale))
    }

    #[test]
    fn ceil8_cases() {
        // (input, ceil8)
        let cases = [
            ("1.000000001", "1.00000001"),
            ("1.00000001", "1.00000001"),
            ("-1.000000019", "-1.00000001"),
            ("0", "0"),
            ("0.00000000000000000001", "0.00000001"),
        ];
        for (input, want) in cases {
            assert_eq!(x(input).ceil8().to_string(), want, "{input}");
        }
    }

    #[test]
    fn round8_ties_to_even() {
        let cases = [
            ("0.000000005", "0"),            // TC1: tie, 0 is even
            ("0.000000015", "0.00000002"),   // TC2: tie, rounds up to even
            ("0.000000025", "0.00000002"),   // TC3: tie, rounds down to even
            ("-0.000000015", "-0.00000002"), // TC4: negative tie
            ("-0.000000025", "-0.00000002"),
            ("1.0000000051", "1.00000001"), // TC5: just above the tie
            ("1.0000000049", "1"),
        ];
        for (input, want) in cases {
            assert_eq!(x(input).round8().to_string(), want, "{input}");
        }
    }

    #[test]
    fn ratio_and_int_division() {
        assert_eq!(round8_ratio(&x("1"), &x("3")).to_string(), "0.33333333");
        assert_eq!(round8_ratio(&x("2"), &x("-3")).to_string(), "-0.66666667");
        assert_eq!(x("100").div_int_ceil8(3).to_string(), "33.33333334");
        assert_eq!(x("-100").div_int_ceil8(3).to_string(), "-33.33333333");
    }

    #[test]
    fn extremes_do_not_overflow() {
        // |size| just under 10^8 at 8 decimals times a price just under 10^9 at 8 decimals.
        let size = x("99999999.99999999");
        let price = x("999999999.99999999");
        let notional = &size * &price;
        assert_eq!(
            notional.to_string(),
            // Checked with Python decimal at 60 digits of precision.
            "99999999999999989.0000000000000001"
        );
    }
}
