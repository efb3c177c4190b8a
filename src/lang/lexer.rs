//! Splits a `.cvs` file into tokens.
//!
//! Tokens are words (runs of letters, digits and `_`: names, numbers, hex bytes,
//! status words), quoted strings (`"purse.cvs"`, no escapes), punctuation and line
//! ends (statements end at a line end). `;` starts a comment; `‖` is read as `++`.

use super::Span;
use alloc::string::String;
use alloc::vec::Vec;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Letters, digits and `_`.
    Word,
    /// A quoted string (the text is its content).
    Str,
    /// Punctuation (the text).
    Punct,
    /// The end of a line.
    Newline,
}

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Tok,
    pub text: String,
    pub span: Span,
}

impl Token {
    /// Whether this is the punctuation `p`.
    pub fn is(&self, p: &str) -> bool {
        self.kind == Tok::Punct && self.text == p
    }

    /// Whether this is the word `w`.
    pub fn is_word(&self, w: &str) -> bool {
        self.kind == Tok::Word && self.text == w
    }

    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self.kind {
            Tok::Str => String::from("a string"),
            Tok::Newline => String::from("the end of the line"),
            _ => alloc::format!("`{}`", self.text),
        }
    }
}

const TWO: [&str; 9] = ["++", "->", "..", "==", "!=", "<=", ">=", "<<", ">>"];
const ONE: &str = ":,(){}[]=<>+-*/%&";

/// Tokenizes `text` (file index `file`); on error, the span and the message.
pub(crate) fn lex(text: &str, file: u16) -> Result<Vec<Token>, (Span, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let chars: Vec<char> = line.chars().collect();
        let mut k = 0;
        let at = |k: usize| Span {
            file,
            line: line_no,
            col: u32::try_from(k + 1).unwrap_or(u32::MAX),
        };
        while k < chars.len() {
            let c = chars[k];
            if c == ';' {
                break;
            }
            if c.is_whitespace() {
                k += 1;
                continue;
            }
            let start = k;
            if c.is_ascii_alphanumeric() || c == '_' {
                while k < chars.len() && (chars[k].is_ascii_alphanumeric() || chars[k] == '_') {
                    k += 1;
                }
                out.push(Token {
                    kind: Tok::Word,
                    text: chars[start..k].iter().collect(),
                    span: at(start),
                });
                continue;
            }
            if c == '"' {
                k += 1;
                let mut s = String::new();
                loop {
                    match chars.get(k) {
                        None => return Err((at(start), String::from("unterminated string"))),
                        Some('"') => break,
                        Some(&ch) if ch.is_control() => {
                            return Err((at(k), String::from("control character in a string")));
                        }
                        Some(&ch) => s.push(ch),
                    }
                    k += 1;
                }
                k += 1;
                out.push(Token {
                    kind: Tok::Str,
                    text: s,
                    span: at(start),
                });
                continue;
            }
            if c == '‖' {
                k += 1;
                out.push(Token {
                    kind: Tok::Punct,
                    text: String::from("++"),
                    span: at(start),
                });
                continue;
            }
            let two: String = chars[k..chars.len().min(k + 2)].iter().collect();
            let text = if TWO.contains(&two.as_str()) {
                two
            } else if ONE.contains(c) {
                String::from(c)
            } else {
                return Err((
                    at(k),
                    alloc::format!("unexpected character `{}`", c.escape_debug()),
                ));
            };
            k += text.chars().count();
            out.push(Token {
                kind: Tok::Punct,
                text,
                span: at(start),
            });
        }
        out.push(Token {
            kind: Tok::Newline,
            text: String::new(),
            span: at(chars.len()),
        });
    }
    // The parser looks one token ahead: every file ends with a line end.
    out.push(Token {
        kind: Tok::Newline,
        text: String::new(),
        span: Span {
            file,
            line: u32::try_from(text.lines().count() + 1).unwrap_or(u32::MAX),
            col: 1,
        },
    });
    Ok(out)
}
