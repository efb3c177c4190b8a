//! Splits one source line into tokens.
//!
//! Tokens are words (`ldc`, `r0`, `0x1F`, `63Cx`, `.const`, `@12`, `m1-a`, `9000/FFF0`),
//! quoted strings (`"common.casm"`, with `\\ \" \n \r \t \u{..}` escapes) and the
//! punctuation `, : = ( ) [ ]`. A `;` outside a string starts a comment.

use alloc::string::String;
use alloc::vec::Vec;

/// Where a token starts: source file index, 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub file: u16,
    pub line: u32,
    pub col: u32,
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A run of word characters.
    Word,
    /// A string literal; the token text is its unescaped content.
    Str,
    /// One punctuation character (the token text).
    Punct,
}

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub text: String,
    pub pos: Pos,
}

impl Token {
    /// Whether this is the punctuation `c`.
    pub fn is_punct(&self, c: char) -> bool {
        self.kind == Kind::Punct && self.text.len() == 1 && self.text.starts_with(c)
    }

    /// The word's text, if this is a word.
    pub fn word(&self) -> Option<&str> {
        (self.kind == Kind::Word).then_some(self.text.as_str())
    }

    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Str => String::from("a string"),
            _ => alloc::format!("`{}`", self.text),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-' | '/' | '#')
}

/// A lexing failure: 1-based column and message.
pub(crate) type LexError = (u32, String);

/// Tokenizes one line (without its line terminator).
pub(crate) fn lex_line(text: &str, file: u16, line: u32) -> Result<Vec<Token>, LexError> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0usize;
    let pos = |i: usize| Pos {
        file,
        line,
        col: u32::try_from(i + 1).unwrap_or(u32::MAX),
    };
    while i < chars.len() {
        let c = chars[i];
        if c == ' ' || c == '\t' || c == '\r' {
            i += 1;
        } else if c == ';' {
            break;
        } else if is_word_char(c) {
            let start = i;
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            out.push(Token {
                kind: Kind::Word,
                text: chars[start..i].iter().collect(),
                pos: pos(start),
            });
        } else if matches!(c, ',' | ':' | '=' | '(' | ')' | '[' | ']') {
            out.push(Token {
                kind: Kind::Punct,
                text: String::from(c),
                pos: pos(i),
            });
            i += 1;
        } else if c == '"' {
            let start = i;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&c) = chars.get(i) else {
                    return Err((pos(start).col, String::from("unterminated string")));
                };
                i += 1;
                match c {
                    '"' => break,
                    '\\' => {
                        let esc_col = pos(i - 1).col;
                        let bad = || (esc_col, String::from("bad escape in string"));
                        let e = *chars.get(i).ok_or_else(bad)?;
                        i += 1;
                        match e {
                            '\\' => s.push('\\'),
                            '"' => s.push('"'),
                            'n' => s.push('\n'),
                            'r' => s.push('\r'),
                            't' => s.push('\t'),
                            'u' => {
                                if chars.get(i) != Some(&'{') {
                                    return Err(bad());
                                }
                                let close =
                                    chars[i..].iter().position(|&c| c == '}').ok_or_else(bad)?;
                                let hex: String = chars[i + 1..i + close].iter().collect();
                                let v = u32::from_str_radix(&hex, 16).map_err(|_| bad())?;
                                s.push(char::from_u32(v).ok_or_else(bad)?);
                                i += close + 1;
                            }
                            _ => return Err(bad()),
                        }
                    }
                    c => s.push(c),
                }
            }
            out.push(Token {
                kind: Kind::Str,
                text: s,
                pos: pos(start),
            });
        } else {
            return Err((pos(i).col, alloc::format!("unexpected character {c:?}")));
        }
    }
    Ok(out)
}

/// Quotes `s` so that [`lex_line`] reads it back unchanged.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Controls, and bidi overrides that would reorder the listing on screen.
            c if crate::script::acts_on_terminal(c) => {
                out.push_str(&alloc::format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn texts(t: &[Token]) -> Vec<&str> {
        t.iter().map(|t| t.text.as_str()).collect()
    }

    #[test]
    fn words_punctuation_and_comments() {
        let t = lex_line("start: ldc r0, [00 A4] ; comment \"x", 0, 1).unwrap();
        assert_eq!(
            texts(&t),
            ["start", ":", "ldc", "r0", ",", "[", "00", "A4", "]"]
        );
        assert_eq!(t[2].pos.col, 8);
        let t = lex_line(".input dlk key(des3, m1-a) @12 63Cx 9000/FFF0", 0, 1).unwrap();
        assert_eq!(
            texts(&t),
            [
                ".input",
                "dlk",
                "key",
                "(",
                "des3",
                ",",
                "m1-a",
                ")",
                "@12",
                "63Cx",
                "9000/FFF0"
            ]
        );
    }

    #[test]
    fn strings_and_escapes() {
        let t = lex_line(r#".include "a;b\"\\\u{41}" ; c"#, 0, 1).unwrap();
        assert_eq!(t[1].kind, Kind::Str);
        assert_eq!(t[1].text, "a;b\"\\A");
        assert_eq!(lex_line("\"abc", 0, 1).unwrap_err().0, 1);
        assert_eq!(lex_line(" \"a\\q\"", 0, 1).unwrap_err().0, 4);
        assert_eq!(lex_line("\"\\u{110000}\"", 0, 1).unwrap_err().0, 2);
        assert!(lex_line("\"\\", 0, 1).is_err());
    }

    #[test]
    fn stray_characters_are_errors() {
        let e = lex_line("ldc r0, $5", 0, 1).unwrap_err();
        assert_eq!(e.0, 9);
        assert!(e.1.contains("unexpected character"));
        assert!(lex_line("é", 0, 1).is_err());
    }

    proptest! {
        #[test]
        fn quote_round_trips(s in "\\PC*|[\\x00-\\x1f\"\\\\]*") {
            let t = lex_line(&quote(&s), 0, 1).unwrap();
            prop_assert_eq!(t.len(), 1);
            prop_assert_eq!(&t[0].text, &s);
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = lex_line(&s, 0, 1);
        }
    }
}
