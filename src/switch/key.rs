//! Keys without allocation.

/// An integer key as its decimal digits, on the stack: `DecimalKey::from(42)` hashes
/// like the string `"42"`, the targeting key flagd's SDKs would send.
///
/// ```
/// use substation::switch::{DecimalKey, Switch, SwitchSettings};
///
/// let switch = Switch::detached("beta", SwitchSettings::percent(30.0)).unwrap();
/// assert_eq!(switch.is_on(DecimalKey::from(12345)), switch.is_on("12345"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecimalKey {
    digits: [u8; 20],
    start: u8,
}

impl From<u64> for DecimalKey {
    fn from(mut n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        DecimalKey {
            digits,
            start: i as u8,
        }
    }
}

impl AsRef<[u8]> for DecimalKey {
    fn as_ref(&self) -> &[u8] {
        &self.digits[usize::from(self.start)..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_display() {
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            assert_eq!(DecimalKey::from(n).as_ref(), n.to_string().as_bytes());
        }
    }
}
