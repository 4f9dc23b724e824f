//! Escaping for HTML and XML, which agree on what matters here: `&`, `<`,
//! `>`, `"` and `'` become character references, and characters XML 1.0
//! cannot carry at all (C0 controls other than tab, newline and carriage
//! return, lone surrogates cannot occur in a `str`, U+FFFE/U+FFFF) are
//! dropped — a console line or an agent's message may hold them.

/// `s` escaped for element content.
pub(crate) fn text(s: &str) -> String {
    escape(s, false)
}

/// `s` escaped for an attribute value in double or single quotes; tab,
/// newline and carriage return are written as references so that an XML
/// parser's attribute normalization keeps them.
pub(crate) fn attr(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, in_attr: bool) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' if in_attr => out.push_str("&#9;"),
            '\n' if in_attr => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_become_references_and_invalid_ones_go() {
        assert_eq!(text(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(text("a\u{1b}[31mb\u{0}c\u{ffff}"), "a[31mbc");
        assert_eq!(text("line\nnext\ttab"), "line\nnext\ttab");
        assert_eq!(attr("line\nnext\ttab\r"), "line&#10;next&#9;tab&#13;");
        assert_eq!(text("2.0.0 → ✓ ü"), "2.0.0 → ✓ ü");
    }
}
