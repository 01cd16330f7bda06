//! Why a value was rejected, and the range checks every concern's validation uses.

use std::fmt::{self, Write as _};

/// Why a settings value was rejected: the field (a dotted path) and the rule it broke.
///
/// Safe to log whatever a source sent: control characters are escaped (`\n`,
/// `\u{1b}`) and a long field or message — serde's messages quote the offending input —
/// is cut in the middle, with a marker saying how many bytes were cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError {
    field: String,
    message: String,
}

impl SettingsError {
    /// A new error for `field` (a dotted path such as `breaker.error_rate`). Control
    /// characters are escaped; a field longer than about 130 bytes or a message longer
    /// than about 330 is cut in the middle (`…[1398101 bytes cut]…`).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        let (field, message) = (field.into(), message.into());
        SettingsError {
            field: Bounded::new(&field, 64, 64).to_string(),
            message: Bounded::new(&message, 160, 160).to_string(),
        }
    }

    /// The dotted path of the offending field; empty when the whole value is malformed.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule that was broken.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SettingsError {}

/// Text from outside (a key, a value) made safe to log and to show: control and other
/// unprintable characters escaped as Rust does (`\n`, `\u{1b}`), and, beyond
/// `head + tail` bytes of output, the middle replaced by `…[N bytes cut]…`. Formatting
/// it reads only what it shows, whatever the text's size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounded<'a> {
    text: &'a str,
    head: usize,
    tail: usize,
    quoted: bool,
}

impl<'a> Bounded<'a> {
    /// `text` as is when short and printable, else escaped and cut.
    pub(crate) fn new(text: &'a str, head: usize, tail: usize) -> Self {
        Bounded {
            text,
            head,
            tail,
            quoted: false,
        }
    }

    /// A key (or any name from outside) in quotes, `"policies/a\nb"`: quotes and
    /// backslashes are escaped too, so the quoted text is unambiguous.
    pub(crate) fn key(text: &'a str) -> Self {
        Bounded {
            text,
            head: 96,
            tail: 32,
            quoted: true,
        }
    }

    fn escape(&self, c: char, out: &mut impl fmt::Write) -> fmt::Result {
        match c {
            '\'' => out.write_char(c),
            '"' | '\\' if !self.quoted => out.write_char(c),
            _ => c.escape_debug().try_for_each(|e| out.write_char(e)),
        }
    }

    fn escaped_len(&self, c: char) -> usize {
        let mut n = Count(0);
        let _ = self.escape(c, &mut n);
        n.0
    }
}

/// Counts the bytes written to it.
struct Count(usize);

impl fmt::Write for Count {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

impl fmt::Display for Bounded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text;
        // The head: characters from the start until `head` bytes of output.
        let (mut head_end, mut shown) = (0, 0);
        for (i, c) in text.char_indices() {
            if shown >= self.head {
                break;
            }
            shown += self.escaped_len(c);
            head_end = i + c.len_utf8();
        }
        // The tail: characters from the end until `tail` bytes of output, not reaching
        // back into the head.
        let (mut tail_start, mut shown) = (text.len(), 0);
        for (i, c) in text[head_end..].char_indices().rev() {
            if shown >= self.tail {
                break;
            }
            shown += self.escaped_len(c);
            tail_start = head_end + i;
        }
        if self.quoted {
            f.write_char('"')?;
        }
        for c in text[..head_end].chars() {
            self.escape(c, f)?;
        }
        // Cutting fewer bytes than the marker takes would only lengthen the text.
        if tail_start - head_end < 32 {
            tail_start = head_end;
        }
        if tail_start > head_end {
            write!(f, "…[{} bytes cut]…", tail_start - head_end)?;
        }
        for c in text[tail_start..].chars() {
            self.escape(c, f)?;
        }
        if self.quoted {
            f.write_char('"')?;
        }
        Ok(())
    }
}

/// `v` is in `lo..=hi`, or the error names `field` and the range.
pub(super) fn range_u64(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), SettingsError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SettingsError::new(
            field,
            format!("{v} is not in {lo}..={hi}"),
        ))
    }
}

/// `v` is in `lo..=hi` (so not NaN), or the error names `field` and `shown`.
pub(super) fn range_f64(
    field: &str,
    v: f64,
    lo: f64,
    hi: f64,
    shown: &str,
) -> Result<(), SettingsError> {
    // `contains` is false for NaN, so NaN is rejected too.
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SettingsError::new(field, format!("{v} is not in {shown}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_printable_text_is_kept_as_is() {
        for text in [
            "",
            "breaker.error_rate",
            "unknown variant `x`",
            "é \"q\" \\ 'a'",
        ] {
            assert_eq!(Bounded::new(text, 64, 64).to_string(), text);
        }
        assert_eq!(Bounded::key("policies/a").to_string(), r#""policies/a""#);
        assert_eq!(Bounded::key(r#"a"b\c"#).to_string(), r#""a\"b\\c""#);
    }

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut_in_the_middle() {
        assert_eq!(
            Bounded::new("a\nb\x1b[31mc\u{202e}", 64, 64).to_string(),
            r"a\nb\u{1b}[31mc\u{202e}"
        );
        let long = format!("start {} end", "x".repeat(1_000_000));
        let cut = Bounded::new(&long, 10, 4).to_string();
        assert_eq!(cut, "start xxxx…[999996 bytes cut]… end");
        // Multi-byte characters are never split.
        let wide = "é".repeat(1000);
        let cut = Bounded::new(&wide, 5, 5).to_string();
        assert!(cut.starts_with("ééé…[") && cut.ends_with("]…ééé"), "{cut}");
        let e = SettingsError::new("x".repeat(10_000), "\n".repeat(10_000));
        assert!(e.field().len() < 200 && e.message().len() < 400, "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}
