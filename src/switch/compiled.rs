//! A switch's value compiled for evaluation: one bound per variant on the 32-bit hash,
//! and the boolean threshold the `is_on` fast path reads from an atomic.

use std::sync::Arc;

use serde_json::Value;

use super::settings::SwitchSettings;

/// A percentage is held in units of 0.0001 %: the weight total of a percentage switch.
pub(crate) const PERCENT_TOTAL: u64 = 1_000_000;

/// `2^32`: a bound every hash is below.
pub(crate) const ALL: u64 = 1 << 32;

/// The boolean threshold of a switch whose "on" keys are not one range `[0, t)` of
/// hashes (variants with non-boolean values): `is_on` takes the slow path.
pub(crate) const NOT_BOOL: u64 = u64::MAX;

/// Why an evaluation gave its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// One result for every key: a percentage of 0 or 100, `"on": true`, or one variant
    /// holding all the weight.
    Static,
    /// The key's bucket chose the result (or, without a key, a random draw did).
    Split,
    /// The switch is turned off (`"on": false`): every key gets the off / first
    /// variant.
    Disabled,
    /// A split switch evaluated without a key where a sticky answer was asked for
    /// ([`Switch::resolve`](super::Switch::resolve)): the off / first variant.
    Default,
}

impl Reason {
    /// The reason in OpenFeature's spelling (`STATIC`, `SPLIT`, `DISABLED`, `DEFAULT`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Default => "DEFAULT",
        }
    }
}

/// One variant of a switch's current value; see [`Variants::pick`](super::Variants::pick).
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    name: Box<str>,
    value: Value,
    index: usize,
}

impl Variant {
    /// The variant's name (`"on"` / `"off"` for a percentage switch).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The variant's value (`true` / `false` for a percentage switch).
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The variant's position in the switch's list.
    pub fn index(&self) -> usize {
        self.index
    }
}

#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) settings: Arc<SwitchSettings>,
    pub(crate) variants: Box<[Variant]>,
    /// Hash `h` picks the first variant `i` with `h < bounds[i]`; the last bound is
    /// [`ALL`].
    pub(crate) bounds: Box<[u64]>,
    pub(crate) reason: Reason,
    /// The variant served when disabled, or without a key for a sticky answer: "off"
    /// for a percentage switch, the first variant otherwise.
    pub(crate) control: usize,
    /// `is_on(h) == (h < bool_threshold)`, or [`NOT_BOOL`].
    pub(crate) bool_threshold: u64,
    /// Whether this is a percentage switch (variants `on`, `off`).
    pub(crate) percentage: bool,
}

/// `ceil(cumulative * 2^32 / total)`: the hashes below it have
/// `(h * total) >> 32 < cumulative`, flagd's "first variant whose cumulative weight
/// exceeds the bucket".
fn bound(cumulative: u64, total: u64) -> u64 {
    (cumulative << 32).div_ceil(total)
}

impl Compiled {
    pub(crate) fn new(settings: Arc<SwitchSettings>) -> Compiled {
        let percentage = settings.variants.is_empty();
        let (variants, weights, control): (Vec<Variant>, Vec<u64>, usize) = if percentage {
            let on = (settings.percent * 10_000.0).round() as u64;
            let on = on.min(PERCENT_TOTAL);
            let v = |name: &str, value, index| Variant {
                name: name.into(),
                value: Value::Bool(value),
                index,
            };
            (
                vec![v("on", true, 0), v("off", false, 1)],
                vec![on, PERCENT_TOTAL - on],
                1,
            )
        } else {
            let variants = settings
                .variants
                .iter()
                .enumerate()
                .map(|(index, v)| Variant {
                    name: v.name.as_str().into(),
                    value: v
                        .value
                        .clone()
                        .unwrap_or_else(|| Value::String(v.name.clone())),
                    index,
                })
                .collect();
            let weights = settings
                .variants
                .iter()
                .map(|v| u64::from(v.weight))
                .collect();
            (variants, weights, 0)
        };
        let total: u64 = weights.iter().sum();
        let mut cumulative = 0;
        let mut bounds: Vec<u64> = weights
            .iter()
            .map(|w| {
                cumulative += w;
                bound(cumulative, total)
            })
            .collect();
        let positive = weights.iter().filter(|w| **w > 0).count();
        let mut reason = if positive > 1 {
            Reason::Split
        } else {
            Reason::Static
        };
        match settings.on {
            Some(false) => {
                reason = Reason::Disabled;
                for (i, b) in bounds.iter_mut().enumerate() {
                    *b = if i < control { 0 } else { ALL };
                }
            }
            Some(true) if percentage => {
                reason = Reason::Static;
                bounds.fill(ALL);
            }
            _ => {}
        }
        let bool_threshold = bool_threshold(&variants, &bounds);
        Compiled {
            settings,
            variants: variants.into(),
            bounds: bounds.into(),
            reason,
            control,
            bool_threshold,
            percentage,
        }
    }

    /// The variant hash `h` picks.
    #[inline]
    pub(crate) fn pick(&self, h: u32) -> usize {
        let h = u64::from(h);
        // The last bound is ALL, so the search always ends.
        let mut i = 0;
        while h >= self.bounds[i] {
            i += 1;
        }
        i
    }
}

/// The `t` with "on" ⇔ `h < t` if the variants chosen by the hashes `[0, t)` are all
/// `true` and the rest all `false`; [`NOT_BOOL`] otherwise.
fn bool_threshold(variants: &[Variant], bounds: &[u64]) -> u64 {
    let mut t = 0;
    let mut start = 0;
    let mut seen_false = false;
    for (v, &end) in variants.iter().zip(bounds) {
        if end > start {
            match v.value {
                Value::Bool(true) if !seen_false => t = end,
                Value::Bool(false) => seen_false = true,
                _ => return NOT_BOOL,
            }
        }
        start = start.max(end);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::settings::VariantSettings;

    fn compile(s: SwitchSettings) -> Compiled {
        Compiled::new(Arc::new(s))
    }

    #[test]
    fn bounds_match_the_flagd_formula() {
        // Every hash near every bound lands where (h * total) >> 32 says.
        let c = compile(SwitchSettings::variants([
            VariantSettings::new("a", 7),
            VariantSettings::new("b", 0),
            VariantSettings::new("c", 13),
            VariantSettings::new("d", 80),
        ]));
        let cumulative = [7u64, 7, 20, 100];
        for &b in c.bounds.iter() {
            for h in [b.saturating_sub(1), b, b + 1] {
                let Ok(h) = u32::try_from(h) else { continue };
                let bucket = (u64::from(h) * 100) >> 32;
                let want = cumulative.iter().position(|&c| bucket < c).unwrap();
                assert_eq!(c.pick(h), want, "h = {h}");
            }
        }
        assert_eq!(c.reason, Reason::Split);
        assert_eq!(c.bool_threshold, NOT_BOOL);
    }

    #[test]
    fn percentages() {
        let c = compile(SwitchSettings::percent(50.0));
        assert_eq!(c.bool_threshold, 1 << 31);
        assert_eq!(c.reason, Reason::Split);
        let c = compile(SwitchSettings::percent(0.0));
        assert_eq!((c.bool_threshold, c.reason), (0, Reason::Static));
        let c = compile(SwitchSettings::percent(100.0));
        assert_eq!((c.bool_threshold, c.reason), (ALL, Reason::Static));
        let mut s = SwitchSettings::percent(100.0);
        s.on = Some(false);
        let c = compile(s);
        assert_eq!((c.bool_threshold, c.reason), (0, Reason::Disabled));
        assert_eq!(c.pick(u32::MAX), 1);
        let mut s = SwitchSettings::percent(0.0);
        s.on = Some(true);
        let c = compile(s);
        assert_eq!((c.bool_threshold, c.reason), (ALL, Reason::Static));
        // 0.0001 % is one unit: a threshold of ceil(2^32 / 10^6).
        let c = compile(SwitchSettings::percent(0.0001));
        assert_eq!(c.bool_threshold, 4295);
    }

    #[test]
    fn boolean_variants_get_a_fast_threshold() {
        let c = compile(SwitchSettings::variants([
            VariantSettings::new("new", 1).value(true),
            VariantSettings::new("old", 3).value(false),
        ]));
        assert_eq!(c.bool_threshold, 1 << 30);
        let c = compile(SwitchSettings::variants([
            VariantSettings::new("old", 3).value(false),
            VariantSettings::new("new", 1).value(true),
        ]));
        assert_eq!(c.bool_threshold, NOT_BOOL);
        let mut s = SwitchSettings::variants([
            VariantSettings::new("a", 3).value(false),
            VariantSettings::new("b", 1).value(true),
        ]);
        s.on = Some(false);
        let c = compile(s);
        assert_eq!(
            (c.bool_threshold, c.reason, c.pick(u32::MAX)),
            (0, Reason::Disabled, 0)
        );
    }
}
