//! Key templates: `product:{sku}`, `line:{order_id}:{line_no}`. A row's key
//! is the template with each `{column}` replaced by the column's value,
//! escaped so that no value can forge another row's key; the key reads
//! back into the values it was made of.
//!
//! Escaped as `%XX` (upper-case hex of each UTF-8 byte): `%`, `:`, `{`, `}`,
//! space and control characters. Every gap between two columns must hold a
//! `:`, which no escaped value contains: that is what makes a key read back
//! into exactly one tuple of values.

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::keys::RESERVED_KEY_PREFIX;

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as it is.
    Literal(String),
    /// A column's value, escaped.
    Column(String),
}

/// A parsed key template.
///
/// ```
/// use prefetch::KeyTemplate;
/// let t = KeyTemplate::parse("line:{order_id}:{line_no}").unwrap();
/// assert_eq!(t.prefix(), "line:");
/// assert_eq!(t.columns(), ["order_id", "line_no"]);
/// let key = t.render(|c| Some(if c == "order_id" { "7:a b" } else { "3" })).unwrap();
/// assert_eq!(key, "line:7%3Aa%20b:3");
/// assert_eq!(t.values_of(&key).unwrap(), ["7:a b", "3"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTemplate {
    text: String,
    pieces: Vec<Piece>,
}

/// Whether `c` is escaped when it appears in a value.
fn escaped(c: char) -> bool {
    matches!(c, '%' | ':' | '{' | '}' | ' ') || c.is_control()
}

/// `value` with `%`, `:`, `{`, `}`, space and control characters as `%XX`.
///
/// ```
/// assert_eq!(prefetch::escape_key_value("a:{b}%"), "a%3A%7Bb%7D%25");
/// ```
pub fn escape_key_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if escaped(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value [`escape_key_value`] made `escaped` from, or `None` when it is
/// not such an escape.
pub fn unescape_key_value(escaped_value: &str) -> Option<String> {
    let bytes = escaped_value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = escaped_value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let value = String::from_utf8(out).ok()?;
    (escape_key_value(&value) == escaped_value).then_some(value)
}

impl KeyTemplate {
    /// Parses `text`: literal text and `{column}` references. Refused: an
    /// unclosed or empty `{}`, no column at all, a template that starts with
    /// a column or with the cache's reserved `__pf:`, two columns with no
    /// `:` between them, and a column used twice.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidTemplate(format!("key template {text:?}: {why}"));
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(at) if rest[at..].starts_with('}') => {
                    return Err(bad("a '}' without its '{'"));
                }
                Some(at) => {
                    if at > 0 {
                        pieces.push(Piece::Literal(rest[..at].to_owned()));
                    }
                    let Some(close) = rest[at..].find('}') else {
                        return Err(bad("a '{' without its '}'"));
                    };
                    let name = &rest[at + 1..at + close];
                    if name.is_empty() || name.contains('{') {
                        return Err(bad("'{}' must name a column"));
                    }
                    pieces.push(Piece::Column(name.to_owned()));
                    rest = &rest[at + close + 1..];
                }
                None => {
                    pieces.push(Piece::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        let template = Self {
            text: text.to_owned(),
            pieces,
        };
        template.check().map_err(|why| bad(&why))?;
        Ok(template)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let columns = self.columns();
        if columns.is_empty() {
            return Err("it names no column".into());
        }
        if self.prefix().is_empty() {
            return Err("it must start with literal text (such as \"product:\")".into());
        }
        if self.prefix().starts_with(RESERVED_KEY_PREFIX) {
            return Err(format!(
                "keys starting with {RESERVED_KEY_PREFIX:?} belong to the cache"
            ));
        }
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].contains(c) {
                return Err(format!("column {c:?} appears twice"));
            }
        }
        let mut after_column = false;
        for piece in &self.pieces {
            match piece {
                Piece::Column(_) if after_column => {
                    return Err("two columns need a ':' between them".into());
                }
                Piece::Column(_) => after_column = true,
                Piece::Literal(l) if l.contains(':') => after_column = false,
                Piece::Literal(_) => {}
            }
        }
        Ok(())
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its pieces, in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The literal text before the first column: every key starts with it.
    pub fn prefix(&self) -> &str {
        match self.pieces.first() {
            Some(Piece::Literal(l)) => l,
            _ => "",
        }
    }

    /// The columns it names, in order.
    pub fn columns(&self) -> Vec<&str> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Column(c) => Some(c.as_str()),
                Piece::Literal(_) => None,
            })
            .collect()
    }

    /// The key for a row whose column values `value` gives (`None` when one
    /// is missing: a NULL cannot name a row).
    pub fn render<'a>(&self, mut value: impl FnMut(&str) -> Option<&'a str>) -> Option<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Column(c) => out.push_str(&escape_key_value(value(c)?)),
            }
        }
        Some(out)
    }

    /// The column values a key was rendered from, in [`columns`](Self::columns)
    /// order, or `None` when `key` is not one of this template's keys.
    pub fn values_of(&self, key: &str) -> Option<Vec<String>> {
        let mut values = Vec::new();
        let mut rest = key;
        let mut pieces = self.pieces.iter().peekable();
        while let Some(piece) = pieces.next() {
            match piece {
                Piece::Literal(l) => rest = rest.strip_prefix(l.as_str())?,
                Piece::Column(_) => {
                    // The value runs to the next literal's first `:` (no
                    // escaped value holds one), less what precedes that `:`
                    // in the literal; the last one runs to the end.
                    let end = match pieces.peek() {
                        Some(Piece::Literal(l)) => match l.find(':') {
                            Some(colon) => rest.find(':')?.checked_sub(colon)?,
                            None => rest.len().checked_sub(l.len())?,
                        },
                        _ => rest.len(),
                    };
                    let raw = rest.get(..end)?;
                    values.push(unescape_key_value(raw)?);
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(values)
    }

    /// Whether some key of `self` could also be a key of `other`: refused
    /// between two tables. Conservative: true whenever one's literal prefix
    /// starts with the other's.
    pub fn may_collide(&self, other: &KeyTemplate) -> bool {
        self.prefix().starts_with(other.prefix()) || other.prefix().starts_with(self.prefix())
    }
}

impl std::fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (text, why) in [
            ("product", "names no column"),
            ("{sku}", "literal text"),
            ("p:{sku", "without its '}'"),
            ("p:sku}", "without its '{'"),
            ("p:{}", "must name a column"),
            ("p:{a}{b}", "':' between"),
            ("p:{a}-{b}", "':' between"),
            ("p:{a}:{a}", "twice"),
            ("__pf:x:{a}", "belong to the cache"),
        ] {
            let err = KeyTemplate::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn a_trailing_literal_and_a_separator_with_text_around_its_colon_read_back() {
        let t = KeyTemplate::parse("u:{a}-x:y-{b}/profile").unwrap();
        let key = t
            .render(|c| Some(if c == "a" { "1-x" } else { "y-2/profile" }))
            .unwrap();
        assert_eq!(key, "u:1-x-x:y-y-2/profile/profile");
        assert_eq!(t.values_of(&key).unwrap(), ["1-x", "y-2/profile"]);
        assert_eq!(t.values_of("u:1-x:y-2"), None);
        assert_eq!(t.values_of("v:1-x:y-2/profile"), None);
    }

    #[test]
    fn prefixes_that_overlap_may_collide() {
        let p = |s: &str| KeyTemplate::parse(s).unwrap();
        assert!(p("product:{a}").may_collide(&p("product:{a}:{b}")));
        assert!(p("p:{a}").may_collide(&p("p:x{a}")), "p:xq is both");
        assert!(!p("p:{a}").may_collide(&p("product:{a}")));
        assert!(!p("product:{a}").may_collide(&p("order:{a}")));
    }

    proptest! {
        /// No two different tuples of values make the same key, and every
        /// key reads back into its values, whatever the values hold.
        #[test]
        fn keys_are_injective_and_read_back(
            a in "\\PC{0,6}|[:%{} ]{0,4}",
            b in "\\PC{0,6}|[:%{} x-]{0,4}",
            c in "\\PC{0,6}|[:%{} ]{0,4}",
            d in "\\PC{0,6}|[:%{} x-]{0,4}",
        ) {
            let t = KeyTemplate::parse("t:{a}-x:{b}").unwrap();
            let key = |x: &str, y: &str| {
                t.render(|col| Some(if col == "a" { x } else { y })).unwrap()
            };
            let (k1, k2) = (key(&a, &b), key(&c, &d));
            prop_assert_eq!(k1 == k2, (a.as_str(), b.as_str()) == (c.as_str(), d.as_str()));
            prop_assert_eq!(t.values_of(&k1).unwrap(), vec![a.clone(), b.clone()]);
            prop_assert_eq!(unescape_key_value(&escape_key_value(&a)), Some(a.clone()));
        }
    }
}
